"""Data layer: vocabulary, sources, objectives (seqio preprocessors) and packing."""
