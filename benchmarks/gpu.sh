#!/usr/bin/env bash
# The 1B train step on one GPU: tokens/s, MFU against the card's bf16 peak, peak memory,
# and cuDNN attention checked against XLA. Run on a GPU machine with jax[cuda], flax,
# optax and gin-config installed (no TensorFlow needed):
#   bash benchmarks/gpu.sh [--model=1b] [--steps=10] [--batch=8]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec "${PYTHON:-python3}" benchmarks/gpu_train_step.py "$@"
