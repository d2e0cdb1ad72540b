#!/usr/bin/env bash
# Train on one multi-GPU node: one process drives every visible GPU (FSDP over them).
#
#   launch/gpu_node.sh [--gpus=0,1,2,3] [--dry_run] -- TRAIN ARGS...
#   launch/gpu_node.sh -- --gin_file=gin/runs/pretrain_1b.gin --gin_file=gin/hardware/gpu.gin \
#       --model_dir=/checkpoints/1b
#
# Needs this project installed with the tested versions: from its root,
# `pip install -c requirements-lock.txt -e '.[gpu]'`. Runs in the current directory (relative
# --gin_file, --model_dir and `import my_tasks` paths mean what they mean here). --dry_run
# prints the command instead of running it.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
GPUS="" DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus=*) GPUS="${1#*=}" ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ $# -gt 0 ]] || { echo "give the training arguments after --" >&2; exit 2; }
ENV=(XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
     "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true ${XLA_FLAGS:-}")
[[ -n "$GPUS" ]] && ENV+=("CUDA_VISIBLE_DEVICES=$GPUS")
source "$HERE/common.sh"  # show()
CMD=(env "${ENV[@]}" python3 -m codegen2_jax.train "$@")
show "${CMD[@]}"
[[ $DRY == 1 ]] || exec "${CMD[@]}"
