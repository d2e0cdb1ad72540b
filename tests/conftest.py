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

import hashlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# The default vocabulary's file in the private cache (registry.default_vocabulary).
VOCAB_FILE = Path(os.environ["CODEGEN2_JAX_CACHE"]) / "vocab" / "stdlib_bpe_8192.model"


def _vocab_key() -> str:
  """What the default vocabulary is trained from and with: the code that trains it, its
  texts (this Python's stdlib) and SentencePiece. Any change trains a new one."""
  h = hashlib.sha256()
  for name in ("vocab.py", "sources.py", "registry.py"):
    h.update((REPO / "codegen2_jax" / "data" / name).read_bytes())
  h.update(f"{sys.version}|{sysconfig.get_paths()['stdlib']}|"
           f"{metadata.version('sentencepiece')}".encode())
  return h.hexdigest()[:16]


def _kept_vocab(config):
  """Where a trained default vocabulary is kept between sessions (pytest's cache folder,
  .pytest_cache/); None with the cache plugin off. Training it costs about two CPU
  minutes, every session, since each session's vocabulary cache is private."""
  cache = getattr(config, "cache", None)
  return None if cache is None else cache.mkdir("codegen2_vocab") / f"{_vocab_key()}.model"


def pytest_configure(config):
  kept = _kept_vocab(config)
  if kept is not None and kept.is_file() and not VOCAB_FILE.exists():
    VOCAB_FILE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kept, VOCAB_FILE)


def pytest_sessionfinish(session):
  kept = _kept_vocab(session.config)
  if kept is not None and VOCAB_FILE.is_file() and not kept.is_file():
    tmp = kept.with_suffix(".tmp")
    shutil.copyfile(VOCAB_FILE, tmp)
    os.replace(tmp, kept)  # whole or absent, for a session that starts meanwhile


@pytest.fixture(scope="session")
def vocab():
  """The default (stdlib-trained) vocabulary, trained once (kept across sessions in
  .pytest_cache/ while what trains it is unchanged)."""
  import tasks
  v = tasks.stdlib.VOCAB
  assert Path(v.sentencepiece_model_file) == VOCAB_FILE
  v.ensure_trained()
  return v


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, vocab):
  """A 2-step run of gin/runs/test_tiny.gin (no evaluation, no samples), trained once for
  the tests that only read a run (sample, evaluate, convert, copy); do not write to it."""
  from codegen2_jax import train
  run = tmp_path_factory.mktemp("tiny_run")
  assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={run}",
                     "--gin.TRAIN_STEPS=2", "--gin.train.eval_every=0",
                     "--gin.train.show_samples_at_end=False"]) == 0
  return run


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
