"""TensorFlow as this project uses it: a CPU-only, quiet runtime for the data pipeline.

TensorFlow only feeds data here; jax owns the accelerators. On import TensorFlow's C++
side logs its CUDA probing ("Could not find cuda drivers", "failed call to cuInit") to
file descriptor 2 before its log level applies, so `setup` imports it and hides the GPUs
from it with fd 2 captured, then replays every captured line except those probes. It also
turns AutoGraph's conversion warnings off (our tf.data functions need no conversion).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# The lines TensorFlow prints while it looks for CUDA on a machine without it, and the
# absl preamble that precedes them. Anything else captured is printed back.
_PROBE_LINES = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|cuda_driver\.cc|cuda_executor\.cc|cuInit|"
    r"cuda drivers|All log messages before absl::InitializeLog|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|oneDNN custom operations|cpu_feature_guard|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"This TensorFlow binary is optimized to use available CPU instructions")

_DONE = False


@contextlib.contextmanager
def _filtered_stderr():
  """Captures fd 2 (C++ logging included) and replays the lines that are not CUDA probes."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real fd 2 (embedded interpreters): filter nothing
    yield
    return
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      for line in tmp.read().decode("utf-8", "replace").splitlines():
        if line.strip() and not _PROBE_LINES.search(line):
          print(line, file=sys.stderr)


def setup() -> None:
  """Imports TensorFlow CPU-only and quiet (idempotent; call before any TF op)."""
  global _DONE
  if _DONE:
    return
  _DONE = True
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _filtered_stderr():
    import tensorflow as tf
    try:
      # Enumerates the physical devices (the cuInit probe) and keeps TF off any GPU.
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's runtime already started (someone ran an op first)
      pass
  tf.autograph.set_verbosity(0)
