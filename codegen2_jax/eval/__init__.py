"""Evaluation: perplexity, HumanEval pass@k, infilling, and the sandbox that runs generated programs."""
