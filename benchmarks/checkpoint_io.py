"""Checkpoint save and restore time of the CPU demo model's train state, local vs gs://.

    python benchmarks/checkpoint_io.py [--repeats=3] [--local_dir=DIR]

Builds the train state of gin/runs/demo_cpu.gin (7.36M parameters plus AdamW's two
moments), then saves it (synchronously: until the step is complete) and restores it
through codegen2_jax.checkpoints, `--repeats` times each, into a local folder and into
gs:// on a gcp-storage-emulator started here the way tests/conftest.py starts it
(in memory, on this machine). Prints the median of each and a markdown table.

The gs:// figures measure the whole path (orbax, tensorstore's GCS driver, gcsfs, HTTP)
against a single-threaded Python server on this host: not the speed of real GCS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def start_emulator() -> tuple[subprocess.Popen, str]:
  """tests/gcs_emulator.py (gcp-storage-emulator with GCS's generation preconditions) with
  bucket `bench`; sets STORAGE_EMULATOR_HOST (before codegen2_jax is imported, which
  reads it)."""
  sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
  import gcs_emulator
  proc, url = gcs_emulator.start("bench")
  os.environ["STORAGE_EMULATOR_HOST"] = url
  return proc, url


def demo_state():
  """The demo run's train state (parameters, AdamW moments, step) on one device."""
  from codegen2_jax import gin_config, partitioning, trainer
  from codegen2_jax.models.codegen import ModelConfig, count_params
  gin_config.parse(["gin/runs/demo_cpu.gin"], [])
  mesh = partitioning.make_mesh()
  rules = partitioning.logical_axis_rules()
  model, _, state, _, _ = trainer.build_train_step(ModelConfig(), 0, 400, mesh, rules)
  return state, count_params(model)


def time_io(root: str, state, repeats: int) -> dict:
  """Median seconds of a save (to completion) and of a restore under `root`."""
  import jax

  from codegen2_jax import checkpoints, storage
  saves, restores = [], []
  for i in range(repeats):
    manager = checkpoints.make_manager(storage.join(root, f"rep{i}"), async_save=False)
    t = time.perf_counter()
    checkpoints.save(manager, 1, state, {"batches": 1})
    checkpoints.finish(manager)
    saves.append(time.perf_counter() - t)
    manager = checkpoints.make_manager(storage.join(root, f"rep{i}"), async_save=False)
    t = time.perf_counter()
    _, restored, _ = checkpoints.restore(manager, state)
    jax.block_until_ready(restored)
    restores.append(time.perf_counter() - t)
    checkpoints.finish(manager)
  size = sum(storage.list_tree(storage.join(root, "rep0")).values())
  return {"save_s": statistics.median(saves), "restore_s": statistics.median(restores),
          "saves": saves, "restores": restores, "bytes": size}


def main() -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--local_dir", default=None, help="default: a fresh temporary folder")
  args = ap.parse_args()
  proc, emulator = start_emulator()
  try:
    import logging
    logging.disable(logging.WARNING)  # orbax's per-save info lines
    state, n_params = demo_state()
    local = args.local_dir or tempfile.mkdtemp(prefix="ckpt_io_")
    from codegen2_jax import checkpoints
    results = {}
    for where, root in (("local", local),
                        ("gs:// (emulator)", f"gs://bench/run-{time.time_ns()}")):
      try:
        results[where] = time_io(root, state, args.repeats)
      except checkpoints.CheckpointError as e:  # reported in the table, not a traceback
        results[where] = {"error": str(e)}
  finally:
    proc.terminate()
    proc.wait(timeout=10)
  print(json.dumps({"params": n_params, "repeats": args.repeats, **results}, indent=1))
  size = results["local"].get("bytes", 0) / 1e6
  print(f"\n| 7M demo train state ({size:.1f} MB) | save (s) | restore (s) |\n|---|---|---|")
  for where, r in results.items():
    if "error" in r:
      print(f"| {where} | failed: {r['error'][:120]} | |")
    else:
      print(f"| {where} | {r['save_s']:.2f} | {r['restore_s']:.2f} |")
  return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
