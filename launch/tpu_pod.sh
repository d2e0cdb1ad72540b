#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create (or reuse) the slice, copy this repository to
# every worker, install it there, and run the same training command on all workers,
# streaming their logs here.
#
#   launch/tpu_pod.sh --tpu=NAME --zone=ZONE --accelerator=v4-64 [--project=P] [--create]
#       [--version=tpu-ubuntu2204-base] [--no_install] [--dry_run] -- TRAIN ARGS...
#
# TRAIN ARGS go to `python -m codegen2_jax.train` on every worker, for example:
#   -- --gin_file=gin/runs/pretrain_1b.gin --gin_file=gin/hardware/tpu.gin \
#      --model_dir=gs://BUCKET/runs/1b --gin.TRAIN_STEPS=100000
# jax.distributed needs no flags on a TPU VM: every worker finds the others itself.
# --dry_run prints the commands instead of running them.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TPU="" ZONE="" ACCEL="" PROJECT="" CREATE=0 VERSION="tpu-ubuntu2204-base" INSTALL=1 DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --create) CREATE=1 ;;
    --no_install) INSTALL=0 ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "--tpu and --zone are required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "give the training arguments after --" >&2; exit 2; }
REMOTE_DIR='~/codegen2-jax'
G=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")

source "$HERE/common.sh"  # show()

run() {  # print, and run unless --dry_run
  show "$@"
  [[ $DRY == 1 ]] || "$@"
}

if [[ $CREATE == 1 ]]; then
  [[ -n "$ACCEL" ]] || { echo "--create needs --accelerator (e.g. v4-64, v5litepod-64)" >&2; exit 2; }
  if [[ $DRY == 1 ]] || ! "${G[@]}" describe "$TPU" "${COMMON[@]}" >/dev/null 2>&1; then
    run "${G[@]}" create "$TPU" "${COMMON[@]}" --accelerator-type="$ACCEL" --version="$VERSION"
  fi
fi
cd "$(dirname "$0")/.."
run "${G[@]}" scp --recurse --worker=all "${COMMON[@]}" \
  setup.py README.md codegen2_jax tasks gin launch "$TPU:$REMOTE_DIR"
if [[ $INSTALL == 1 ]]; then
  run "${G[@]}" ssh "$TPU" --worker=all "${COMMON[@]}" \
    --command="cd $REMOTE_DIR && python3 -m pip install -q -e '.[tpu]'"
fi
TRAIN="$(printf '%q ' "$@")"
run "${G[@]}" ssh "$TPU" --worker=all "${COMMON[@]}" \
  --command="cd $REMOTE_DIR && python3 -m codegen2_jax.train $TRAIN 2>&1 | tee -a ~/codegen2_train.log"
