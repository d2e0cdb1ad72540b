#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: ship the experiment (this project plus your gin files
# and task modules) to every worker, install the tested versions into a venv there, free
# the TPU from a stale earlier run, and start the same training command on every worker,
# detached (it survives this terminal). Follow it with `logs`, end it with `stop`.
#
#   launch/tpu_pod.sh [start] --tpu=NAME --zone=ZONE [--project=P]
#       [--create --accelerator=v4-64 [--version=tpu-ubuntu2204-base]]
#       [--ship=PATH[,PATH...]] [--env=NAME=VALUE] [--python=python3.11] [--no_install]
#       [--grace=SECONDS] [--dry_run] -- TRAIN ARGS...
#   launch/tpu_pod.sh logs --tpu=NAME --zone=ZONE [--project=P] [--worker=N|all] [--lines=N]
#   launch/tpu_pod.sh stop --tpu=NAME --zone=ZONE [--project=P] [--grace=SECONDS]
#
# TRAIN ARGS go to `python -m codegen2_jax.train` on every worker, for example:
#   -- --gin_file=gin/runs/pretrain_1b.gin --gin_file=gin/hardware/tpu.gin \
#      --gin_file=my.gin --model_dir=gs://BUCKET/runs/1b --gin.TRAIN_STEPS=100000
# jax.distributed needs no flags on a TPU VM: every worker finds the others itself.
#
# Shipping: one tarball, copied to every worker and unpacked into ~/codegen2-jax/code
# (replacing the previous one; the run's working directory). It holds the project
# (setup.py requirements-lock.txt README.md codegen2_jax tasks gin launch), every --ship
# path (files or folders, relative to the current directory, kept at that relative path),
# every --gin_file of TRAIN ARGS that is not part of the project, the gin files those
# `include` (followed recursively), and the modules they `import` that live here
# (NAME.py or NAME/__init__.py). Data and --model_dir are not shipped: use gs:// paths.
# Install: a venv at ~/codegen2-jax/venv made by --python (default python3.11, the tested
# version; TPU VM images such as tpu-ubuntu2204-base have Python 3.10 only: install 3.11
# first, e.g. `sudo apt-get install -y python3.11 python3.11-venv`), then
# `pip install -c requirements-lock.txt -e '.[tpu]'`; skipped while setup.py, the lock
# file and --python are unchanged (a stamp file in the venv); --no_install skips it always.
# Stale runs (start and stop): the run named by ~/codegen2-jax/run.pid gets SIGTERM on its
# process group (it saves a checkpoint) and SIGKILL after --grace seconds (default 120);
# then any process still holding /dev/accel* or /dev/vfio/* is killed and
# /tmp/libtpu_lockfile removed, on every worker.
# Logs: ~/codegen2-jax/logs/<start time>/worker-<index>.log on each worker (logs/latest
# is the newest run); `logs` tails them (worker 0 by default).
# --env=NAME=VALUE (repeatable) sets a variable for the training on every worker.
# --dry_run prints every command (local and remote) and runs nothing.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true  # '&' in replacements stays literal
HERE="$(cd "$(dirname "$0")" && pwd -P)"
REPO="$(cd "$HERE/.." && pwd -P)"
CWD="$(pwd -P)"
source "$HERE/common.sh"  # show()

PROJECT_FILES=(setup.py requirements-lock.txt README.md codegen2_jax tasks gin launch)
TARBALL=codegen2-jax-ship.tar.gz  # in the workers' home directory until unpacked

die() { echo "$*" >&2; exit 2; }

VERB=start
case "${1:-}" in start|logs|stop) VERB="$1"; shift ;; esac
TPU="" ZONE="" ACCEL="" PROJECT="" CREATE=0 VERSION="tpu-ubuntu2204-base" INSTALL=1 DRY=0
PY=python3.11 GRACE=120 WORKER=0 NLINES=100 SHIP=() ENVS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --create) CREATE=1 ;;
    --ship=*) IFS=, read -r -a more <<< "${1#*=}"; SHIP+=(${more[@]+"${more[@]}"}) ;;
    --env=*) [[ "${1#*=}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env wants NAME=VALUE, got ${1#*=}"
             ENVS+=("${1#*=}") ;;
    --python=*) PY="${1#*=}" ;;
    --no_install) INSTALL=0 ;;
    --grace=*) GRACE="${1#*=}"
               [[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace wants seconds, got $GRACE" ;;
    --worker=*) WORKER="${1#*=}"
                [[ "$WORKER" =~ ^([0-9]+|all)$ ]] || die "--worker wants N or all, got $WORKER" ;;
    --lines=*) NLINES="${1#*=}"
               [[ "$NLINES" =~ ^[0-9]+$ ]] || die "--lines wants a number, got $NLINES" ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) die "unknown option $1 (see the header of $0)" ;;
  esac
  shift
done
[[ -n "$TPU" && -n "$ZONE" ]] || die "--tpu and --zone are required"
if [[ $VERB == start ]]; then
  [[ $# -gt 0 ]] || die "give the training arguments after --"
else
  [[ $# -eq 0 ]] || die "$VERB takes no training arguments"
fi

G=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && COMMON+=(--project="$PROJECT")

run() {  # print, and run unless --dry_run
  show "$@"
  [[ $DRY == 1 ]] || "$@"
}
on_workers() {  # on_workers all|N REMOTE_COMMAND
  run "${G[@]}" ssh "$TPU" --worker="$1" "${COMMON[@]}" --command="$2"
}

# Remote commands, one line each (so that --dry_run prints one line per command). `~` is
# expanded by the workers' shell; @NAME@ marks what is filled in below.
CLEANUP='D=~/codegen2-jax; H=$(hostname); '\
'if [ -f $D/run.pid ]; then pg=$(cat $D/run.pid); '\
'if pgrep -g "$pg" -f codegen2_jax.train >/dev/null; then '\
'echo "[$H] stopping the run in process group $pg: SIGTERM (it saves a checkpoint), SIGKILL after @GRACE@ s"; '\
'kill -TERM -- -"$pg"; for i in $(seq @GRACE5@); do pgrep -g "$pg" >/dev/null || break; sleep 0.2; done; '\
'kill -KILL -- -"$pg" 2>/dev/null; fi; rm -f $D/run.pid; fi; '\
'if command -v lsof >/dev/null; then pids=$(sudo lsof -t /dev/accel* /dev/vfio/* 2>/dev/null | sort -u); '\
'else pids=$(sudo fuser /dev/accel* /dev/vfio/* 2>/dev/null); fi; '\
'for p in $pids; do echo "[$H] killing stale process $p, which holds the TPU: $(ps -o args= -p $p)"; '\
'sudo kill -9 $p; done; [ -z "$pids" ] || sleep 1; sudo rm -f /tmp/libtpu_lockfile'

UNPACK='D=~/codegen2-jax; mkdir -p $D && rm -rf $D/code.new && mkdir $D/code.new && '\
'tar -xzf ~/@TARBALL@ -C $D/code.new && rm -rf $D/code && mv $D/code.new $D/code && '\
'rm -f ~/@TARBALL@'

INSTALL_CMD='D=~/codegen2-jax; H=$(hostname); PY=@PY@; '\
'if [ -f $D/venv/.installed-@STAMP@ ]; then echo "[$H] $D/venv is up to date (stamp @STAMP@)"; else '\
'command -v $PY >/dev/null || { echo "[$H] $PY not found: TPU VM images such as '\
'tpu-ubuntu2204-base have Python 3.10 only; install 3.11 on every worker (sudo apt-get install '\
'-y python3.11 python3.11-venv) or pass --python=PATH" >&2; exit 1; }; '\
'$PY -c "import sys; sys.exit(sys.version_info < (3, 11))" || { echo "[$H] $PY is '\
'$($PY -V 2>&1); codegen2-jax needs Python 3.11 (tested) or newer: pass --python=PATH" >&2; '\
'exit 1; }; echo "[$H] installing into $D/venv with $PY (minutes, once per lock file)"; '\
'rm -rf $D/venv && $PY -m venv $D/venv && $D/venv/bin/python -m pip install -q --upgrade pip && '\
'cd $D/code && $D/venv/bin/python -m pip install -q -c requirements-lock.txt -e ".[tpu]" && '\
'touch $D/venv/.installed-@STAMP@ || exit 1; fi'

# The wrapper writes its pid (= the new session's process group) to run.pid, runs the
# training, logs its exit status and removes run.pid; setsid + nohup + redirections
# detach it from the ssh session. Its SIGTERM trap makes it wait for the training to
# save and exit (a trapped signal is reset to the default in the child, not ignored).
START='D=~/codegen2-jax; W=$(curl -sf -m 2 -H "Metadata-Flavor: Google" '\
'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number '\
'2>/dev/null || hostname); L=$D/logs/@RUN@; '\
'[ -x $D/venv/bin/python ] || { echo "[worker $W] no venv at $D/venv: start once without --no_install" >&2; exit 1; }; '\
'mkdir -p $L && ln -sfn @RUN@ $D/logs/latest && cd $D/code || exit 1; '\
'setsid nohup bash -c '\''trap : TERM; echo $$ > "$0"; "$@"; s=$?; '\
'echo "[codegen2-jax] training exited with status $s at $(date -u)"; rm -f "$0"; exit $s'\'' '\
'$D/run.pid env @ENV@$D/venv/bin/python -m codegen2_jax.train @ARGS@'\
'> $L/worker-$W.log 2>&1 < /dev/null & p=$!; '\
'for i in $(seq 25); do [ -f $D/run.pid ] && break; kill -0 $p 2>/dev/null || break; sleep 0.2; done; '\
'sleep 1; if [ -f $D/run.pid ] && pgrep -g "$(cat $D/run.pid)" >/dev/null; then '\
'echo "[worker $W] running in process group $(cat $D/run.pid); log: $L/worker-$W.log"; '\
'else echo "[worker $W] the run ended at once; the end of $L/worker-$W.log:" >&2; '\
'tail -n 20 $L/worker-$W.log >&2; exit 1; fi'

LOGS='L=~/codegen2-jax/logs/latest; ls $L/worker-*.log >/dev/null 2>&1 || '\
'{ echo "[$(hostname)] no run logs in $L" >&2; exit 1; }; tail -n @LINES@ -F $L/worker-*.log'

cleanup() {  # CLEANUP with --grace filled in (waited for in steps of 0.2 s)
  local c="${CLEANUP//@GRACE@/$GRACE}"
  echo "${c//@GRACE5@/$((GRACE * 5))}"
}

FLAGS=(--tpu="$TPU" --zone="$ZONE")
[[ -n "$PROJECT" ]] && FLAGS+=(--project="$PROJECT")

case "$VERB" in
  logs)
    on_workers "$WORKER" "${LOGS//@LINES@/$NLINES}"
    exit 0 ;;
  stop)
    echo "# end the run and free the TPU on every worker"
    on_workers all "$(cleanup)"
    exit 0 ;;
esac

# ---- start: work out what to ship --------------------------------------------------------
FROM_REPO=()  # relative to $REPO: the project folders and gin files under $REPO
FROM_CWD=()   # relative to $CWD: your files
SEEN=$'\n'

norm() {  # strip ./ prefixes and a trailing /
  local p="$1"
  while [[ "$p" == ./* ]]; do p="${p#./}"; done
  echo "${p%/}"
}
check_relative() {  # check_relative WHAT PATH: shipped paths keep their relative path
  [[ "$2" != /* ]] || die "$1 $2: give paths relative to the current directory (they keep that relative path on the workers)"
  [[ "/$2/" != */../* ]] || die "$1 $2: paths must stay inside the current directory (no ..)"
}
in_project() {
  local first="${1%%/*}" p
  for p in "${PROJECT_FILES[@]}"; do [[ "$first" == "$p" ]] && return 0; done
  return 1
}
add() {  # add BASE REL: ship BASE/REL as REL; fails if it was already added
  [[ "$SEEN" != *$'\n'"$1/$2"$'\n'* ]] || return 1
  SEEN+="$1/$2"$'\n'
  if [[ "$1" == "$REPO" ]]; then
    in_project "$2" || FROM_REPO+=("$2")
  else
    FROM_CWD+=("$2")
  fi
}
ship_module() {  # a module a gin file imports, when it lives here rather than in the venv
  local m="$1" b
  [[ "$m" == codegen2_jax || "$m" == tasks ]] && return 0
  for b in "$CWD" "$REPO"; do
    if [[ -f "$b/$m.py" ]]; then add "$b" "$m.py" || true; return 0; fi
    if [[ -f "$b/$m/__init__.py" ]]; then add "$b" "$m" || true; return 0; fi
  done
}
ship_gin() {  # ship_gin NAME file|include: find it as gin would, ship it, follow it
  local name b
  name="$(norm "$1")"
  check_relative "gin file" "$name"
  # codegen2_jax.gin_config: --gin_file is tried as given, under the repo, under gin/;
  # an include under the repo, then as given.
  local bases=("$REPO" "$CWD")
  [[ $2 == file ]] && bases=("$CWD" "$REPO" "$REPO/gin")
  for b in "${bases[@]}"; do
    [[ -f "$b/$name" ]] || continue
    if [[ "$b" == "$REPO/gin" ]]; then b="$REPO"; name="gin/$name"; fi
    add "$b" "$name" || return 0
    [[ "$b" == "$REPO" ]] && in_project "$name" && return 0
    local inc mod
    while IFS= read -r inc; do ship_gin "$inc" include; done < <(
      sed -nE "s/^[[:space:]]*include[[:space:]]+['\"]([^'\"]+)['\"].*/\\1/p" "$b/$name")
    while IFS= read -r mod; do ship_module "$mod"; done < <(
      sed -nE 's/^[[:space:]]*(import|from)[[:space:]]+([A-Za-z_][A-Za-z0-9_]*).*/\2/p' "$b/$name")
    return 0
  done
  die "gin file $1 not found (looked in $CWD, $REPO and $REPO/gin)"
}

for p in ${SHIP[@]+"${SHIP[@]}"}; do
  [[ -n "$p" ]] || continue
  p="$(norm "$p")"
  check_relative "--ship" "$p"
  [[ -e "$CWD/$p" ]] || die "--ship $p: no such file or folder in $CWD"
  add "$CWD" "$p" || true
done
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --gin_file=*) ship_gin "${args[i]#*=}" file ;;
    --gin_file) [[ $((i + 1)) -lt ${#args[@]} ]] && ship_gin "${args[i + 1]}" file ;;
  esac
done

RUN="$(date -u +%Y%m%d-%H%M%S)"
if command -v sha1sum >/dev/null; then SHA=(sha1sum); else SHA=(shasum -a 1); fi
STAMP="$( { cat "$REPO/setup.py" "$REPO/requirements-lock.txt"; echo "$PY"; } | "${SHA[@]}" | cut -c1-12)"
LOCAL_TAR="${TMPDIR:-/tmp}/codegen2-jax-ship-$RUN-$$.tar.gz"
[[ $DRY == 1 ]] || trap 'rm -f "$LOCAL_TAR"' EXIT

if [[ $CREATE == 1 ]]; then
  [[ -n "$ACCEL" ]] || die "--create needs --accelerator (e.g. v4-64, v5litepod-64)"
  if [[ $DRY == 1 ]] || ! "${G[@]}" describe "$TPU" "${COMMON[@]}" >/dev/null 2>&1; then
    echo "# create the slice"
    run "${G[@]}" create "$TPU" "${COMMON[@]}" --accelerator-type="$ACCEL" --version="$VERSION"
  fi
fi

TAR=(tar -czf "$LOCAL_TAR" --exclude=__pycache__ --exclude='*.pyc'
     -C "$REPO" "${PROJECT_FILES[@]}" ${FROM_REPO[@]+"${FROM_REPO[@]}"})
[[ ${#FROM_CWD[@]} -gt 0 ]] && TAR+=(-C "$CWD" "${FROM_CWD[@]}")
YOURS=(${FROM_REPO[@]+"${FROM_REPO[@]}"} ${FROM_CWD[@]+"${FROM_CWD[@]}"})
echo "# ship the project and your files (${YOURS[*]:-none}): one tarball to every worker"
run "${TAR[@]}"
run "${G[@]}" scp "$LOCAL_TAR" "$TPU:$TARBALL" --worker=all "${COMMON[@]}"
echo "# end a stale run and free the TPU on every worker"
on_workers all "$(cleanup)"
echo "# unpack into ~/codegen2-jax/code"
on_workers all "${UNPACK//@TARBALL@/$TARBALL}"
if [[ $INSTALL == 1 ]]; then
  echo "# install the locked versions into ~/codegen2-jax/venv (skipped when up to date)"
  cmd="${INSTALL_CMD//@PY@/$(printf '%q' "$PY")}"
  on_workers all "${cmd//@STAMP@/$STAMP}"
fi
echo "# start the training on every worker, detached; logs in ~/codegen2-jax/logs/$RUN"
cmd="${START//@RUN@/$RUN}"
cmd="${cmd//@ENV@/$(printf '%q ' PYTHONUNBUFFERED=1 ${ENVS[@]+"${ENVS[@]}"})}"
on_workers all "${cmd//@ARGS@/$(printf '%q ' "$@")}"
echo "# it runs on when this terminal closes. Follow it, end it:"
echo "#   $(show "$0" logs "${FLAGS[@]}") [--worker=N|all]"
echo "#   $(show "$0" stop "${FLAGS[@]}")"
