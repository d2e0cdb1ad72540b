"""Test session setup: a private vocabulary cache and a quiet TensorFlow."""

import os
import tempfile

# Must happen before anything imports `tasks` (the vocabulary path is read at import).
os.environ.setdefault("CODEGEN2_JAX_CACHE", tempfile.mkdtemp(prefix="cg2_test_cache_"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session and its subprocesses: most tests
# compile the same tiny train step again in a fresh process (measured: a tiny CLI run
# spends about a fifth less CPU time with the cache warm).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="cg2_test_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vocab():
  """The default (stdlib-trained) vocabulary, trained once per test session."""
  import tasks
  v = tasks.stdlib.VOCAB
  v.ensure_trained()
  return v


@pytest.fixture(scope="session")
def gcs_emulator():
  """A real GCS protocol server (gcp-storage-emulator, in memory, with GCS's generation
  preconditions: tests/gcs_emulator.py) for the session, with
  bucket `test-bucket`; STORAGE_EMULATOR_HOST (and what codegen2_jax.storage derives from
  it) is set in os.environ, so child processes reach it too. Yields its URL."""
  import gcs_emulator as server  # tests/gcs_emulator.py

  proc, url = server.start("test-bucket")
  names = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
           "GOOGLE_AUTH_TOKEN_FOR_TESTING", "EPATH_USE_TF")
  saved = {k: os.environ.get(k) for k in names}
  for k in names[1:]:
    os.environ.pop(k, None)  # derived from STORAGE_EMULATOR_HOST below, as for a user
  os.environ["STORAGE_EMULATOR_HOST"] = url
  from codegen2_jax import storage
  storage.configure()
  try:
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@pytest.fixture
def gcs_dir(gcs_emulator, request):
  """A fresh gs:// folder on the emulator for one test (gs://test-bucket/<test>-<n>)."""
  import re
  import uuid
  name = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
  return f"gs://test-bucket/{name}-{uuid.uuid4().hex[:8]}"
