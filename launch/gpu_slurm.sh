#!/usr/bin/env bash
# Train on several GPU nodes under Slurm: one task per node, jax.distributed set up from
# the job (coordinator = the first node), every node reading its own data shard.
#
#   launch/gpu_slurm.sh --nodes=4 [--gpus_per_node=8] [--partition=P] [--time=48:00:00]
#       [--account=A] [--dry_run] -- TRAIN ARGS...
#
# Writes the batch script to runs/slurm/<timestamp>.sbatch and submits it with sbatch;
# --dry_run prints the script and the sbatch command instead. The job runs in the current
# directory, so relative --gin_file, --model_dir and `import my_tasks` paths mean what they
# mean here. Every node needs this project installed with the tested versions, e.g. on a
# shared filesystem: `pip install -c requirements-lock.txt -e '.[gpu]'` (the python3 first
# on PATH when the job starts is used; sbatch passes on your environment, an active venv too).
set -euo pipefail
NODES="" GPN=8 PARTITION="" TIME="48:00:00" ACCOUNT="" DRY=0 PORT=12355
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes=*) NODES="${1#*=}" ;;
    --gpus_per_node=*) GPN="${1#*=}" ;;
    --partition=*) PARTITION="${1#*=}" ;;
    --time=*) TIME="${1#*=}" ;;
    --account=*) ACCOUNT="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$NODES" ]] || { echo "--nodes is required" >&2; exit 2; }
[[ $# -gt 0 ]] || { echo "give the training arguments after --" >&2; exit 2; }
WORKDIR="$(pwd)"
cd "$(dirname "$0")/.."
TRAIN="$(printf '%q ' "$@")"
SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=codegen2-jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPN
#SBATCH --time=$TIME
${PARTITION:+#SBATCH --partition=$PARTITION}
${ACCOUNT:+#SBATCH --account=$ACCOUNT}
#SBATCH --output=runs/slurm/%j.log
set -euo pipefail
cd $(printf '%q' "$WORKDIR")
export JAX_COORDINATOR_ADDRESS=\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n1):$PORT
export JAX_NUM_PROCESSES=\$SLURM_NTASKS
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
srun bash -c 'JAX_PROCESS_ID=\$SLURM_PROCID exec \"\$0\" \"\$@\"' python3 -m codegen2_jax.train $TRAIN
"
if [[ $DRY == 1 ]]; then
  printf '%s\n' "$SCRIPT"
  echo "sbatch runs/slurm/<timestamp>.sbatch"
  exit 0
fi
mkdir -p runs/slurm
FILE="runs/slurm/$(date +%Y%m%d-%H%M%S).sbatch"
printf '%s\n' "$SCRIPT" > "$FILE"
echo "sbatch $FILE"
sbatch "$FILE"
