"""Objective ids carried per token (for per-objective metrics); no TensorFlow needed."""

CAUSAL_LM, SPAN_CORRUPTION, T5_SPAN_CORRUPTION, PREFIX_LM, PSM_INFILL = range(5)
OBJECTIVE_NAMES = ("causal_lm", "span_corruption", "t5_span_corruption", "prefix_lm",
                   "psm_infill")
