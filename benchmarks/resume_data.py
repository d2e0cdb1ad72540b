"""Restart-to-first-batch seconds of the data pipeline: restored state vs replay.

    python benchmarks/resume_data.py [--name=stdlib_demo] [--rows=8] \
        [--seq_lens=256,2048] [--positions=0,500,5000]

For each row length, one pass over the pipeline (seed 0, one host) saves the iterator
state (pipeline.HostBatches.save_state, what each checkpoint holds per host) at every
position; then, at each position, a fresh pipeline is built and timed to its first batch
two ways: restoring the saved state (resume today) and skipping that many batches (the
replay a checkpoint without a data state falls back to). Both include building the
pipeline. Prints the state bytes per host and a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--name", default="stdlib_demo")
  p.add_argument("--rows", type=int, default=8, help="rows per batch (one host)")
  p.add_argument("--seq_lens", default="256,2048")
  p.add_argument("--positions", default="0,500,5000")
  args = p.parse_args(argv)
  import numpy as np
  import tasks  # noqa: F401
  from codegen2_jax import gin_config
  from codegen2_jax.data import pipeline
  gin_config.parse(["gin/data/cache.gin"], [])
  positions = sorted(int(x) for x in args.positions.split(","))
  rows = []
  work = tempfile.mkdtemp(prefix="resume_bench_")
  try:
    for seq_len in (int(x) for x in args.seq_lens.split(",")):
      def build():
        return pipeline.host_dataset(args.name, seq_len, args.rows, seed=0)

      # One pass, saving the state at each position (the first batch after it kept).
      it, at, saved = pipeline.HostBatches(build()), 0, {}
      t0 = time.perf_counter()
      for pos in positions:
        while at < pos:
          next(it)
          at += 1
        d = os.path.join(work, f"{seq_len}_{pos}")
        start = time.perf_counter()
        size = it.save_state(d)
        saved[pos] = (d, size, time.perf_counter() - start, next(it)["targets"])
        at += 1
      print(f"seq_len {seq_len}: one pass to batch {positions[-1]} in "
            f"{time.perf_counter() - t0:.1f} s", flush=True)
      for pos in positions:
        d, size, save_s, want = saved[pos]
        start = time.perf_counter()
        restored = pipeline.HostBatches(build())
        if pos:
          restored.restore_state(d)
        first = next(restored)["targets"]
        restore_s = time.perf_counter() - start
        start = time.perf_counter()
        replayed = next(pipeline.batches(build(), skip=pos))["targets"]
        replay_s = time.perf_counter() - start
        assert np.array_equal(first, want) and np.array_equal(replayed, want), pos
        rows.append((f"{args.rows} x {seq_len}", pos, replay_s, restore_s, size, save_s))
        print(rows[-1], flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  print(f"\n{args.name}, one host, load {os.getloadavg()[0]:.1f}\n")
  print("| rows | position (batches) | replay s | restore s | state bytes per host | save s |")
  print("|---|---:|---:|---:|---:|---:|")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:,} | {r[5]:.2f} |")


if __name__ == "__main__":
  main()
