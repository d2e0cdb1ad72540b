"""Data layer: vocabulary, sources, objectives (seqio preprocessors) and packing."""

from codegen2_jax.data import tf_runtime as _tf_runtime

_tf_runtime.setup()  # TensorFlow feeds data only: CPU-only and quiet (see tf_runtime)
