"""CodeGen-architecture decoder models in Flax NNX."""

from codegen2_jax.models.codegen import CodeGen, ModelConfig, init_cache  # noqa: F401
