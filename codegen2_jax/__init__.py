"""codegen2-jax: train CodeGen2-style code LLMs with JAX/Flax on TPU, GPU or CPU."""

import os as _os

# TensorFlow only feeds data here: keep its C++ logging quiet and its hands off GPUs.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"

# gs:// through gcsfs (emulator-aware); before anything touches a path (see storage.py).
from codegen2_jax import storage as _storage  # noqa: E402

_storage.configure()
