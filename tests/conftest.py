"""Test session setup: a private vocabulary cache and a quiet TensorFlow."""

import os
import tempfile

# Must happen before anything imports `tasks` (the vocabulary path is read at import).
os.environ.setdefault("CODEGEN2_JAX_CACHE", tempfile.mkdtemp(prefix="cg2_test_cache_"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def vocab():
  """The default (stdlib-trained) vocabulary, trained once per test session."""
  import tasks
  v = tasks.stdlib.VOCAB
  v.ensure_trained()
  return v
