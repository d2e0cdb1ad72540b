#!/usr/bin/env bash
# The two commands of the README:
#   ./run.sh demo [MODEL_DIR]   train the CPU demo on the embedded corpus, then sample from it
#   ./run.sh test [PYTEST ARGS] run the test suite
# Each creates .venv on first use (Python 3.11 + pip are all it needs), installs the exact
# versions of requirements-lock.txt (the set the tests passed with), reinstalls only when
# setup.py or the lock file changes, and is safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed-$(cat setup.py requirements-lock.txt | sha1sum | cut -c1-12)"

if [[ ! -f "$STAMP" ]]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null; then
    echo "[run.sh] $PYTHON is not Python 3.11 or newer (tested: 3.11); set PYTHON=python3.11" >&2
    exit 2
  fi
  echo "[run.sh] installing into $VENV (about a minute, once)" >&2
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -c requirements-lock.txt -e ".[test]"
  rm -f "$VENV"/.installed-*
  touch "$STAMP"
fi

export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
# Optional: CODEGEN2_JEMALLOC=1 preloads jemalloc (Debian/Ubuntu: apt install libjemalloc2),
# which made the CPU train step faster here (README, "Measured on this CPU").
if [[ "${CODEGEN2_JEMALLOC:-0}" == 1 ]]; then
  jemalloc="$(ls /usr/lib/*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2 2>/dev/null | head -1)"
  if [[ -n "$jemalloc" ]]; then
    export LD_PRELOAD="$jemalloc${LD_PRELOAD:+:$LD_PRELOAD}"
  else
    echo "[run.sh] CODEGEN2_JEMALLOC=1 but no libjemalloc.so.2 found; using the default malloc" >&2
  fi
fi
cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    dir="${1:-runs/demo-$(date +%Y%m%d-%H%M%S)}"
    echo "[run.sh] model_dir: $dir" >&2
    exec "$VENV/bin/python" -m codegen2_jax.train --gin_file=gin/runs/demo_cpu.gin \
      --model_dir="$dir"
    ;;
  test)
    exec "$VENV/bin/python" -m pytest -q --durations=25 "$@" tests
    ;;
  *)
    echo "usage: ./run.sh demo [MODEL_DIR] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
