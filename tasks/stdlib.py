"""Tasks over the embedded default corpus (no download): the stdlib as code and prose."""

from codegen2_jax.data import registry, sources

VOCAB = registry.default_vocabulary()

registry.register_task("stdlib_code", sources.stdlib_code_source())
registry.register_task("stdlib_prose", sources.stdlib_prose_source())
registry.register_mixture("stdlib_demo", [("stdlib_code", 0.8), ("stdlib_prose", 0.2)])
