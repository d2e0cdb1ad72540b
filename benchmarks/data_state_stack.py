"""Data state per host and seconds to the first batch on the 19-task Stack mixture.

    python benchmarks/data_state_stack.py [--seq_len=2048] [--rows=8] \
        [--gin.registry.task_shuffle_buffer.size=256] [--gin.packing.pack_dataset.window=512]

Deals the standard library's Python files into a Stack-format folder of the 19 languages
of tasks/stack.py (one parquet file each, `content` plus MIT licence columns), builds one
host's `stack_code` pipeline (CodeGen2 tokenizer, tokenized online) and saves its
iterator state (pipeline.HostBatches.save_state, what each checkpoint holds per host) at
batches 1, 20 and 60. Prints one line per save. Not a test.
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


def stack_folder(root: str) -> None:
  """Writes the stdlib's code as <root>/<language>/data-00000-of-00001.parquet."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  import tasks.stack
  from codegen2_jax.data import sources
  docs = [text for _, text in sources.stdlib_code()]
  languages = list(tasks.stack.LANGUAGES.values())
  for i, language in enumerate(languages):
    part = docs[i::len(languages)]
    mit = pa.array([["MIT"]] * len(part), type=pa.list_(pa.string()))
    os.makedirs(os.path.join(root, language))
    pq.write_table(pa.table({"content": part, "max_stars_repo_licenses": mit,
                             "max_issues_repo_licenses": pa.nulls(len(part), mit.type),
                             "max_forks_repo_licenses": pa.nulls(len(part), mit.type)}),
                   os.path.join(root, language, "data-00000-of-00001.parquet"))


def main(argv=None) -> None:
  from codegen2_jax import gin_config
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--rows", type=int, default=8, help="rows per batch (one host)")
  args = p.parse_args(rest)
  import tasks  # noqa: F401
  from codegen2_jax.data import pipeline
  work = tempfile.mkdtemp(prefix="stack_state_")
  try:
    stack_folder(os.path.join(work, "stack"))
    gin_config.parse(["gin/data/cache.gin", *files],
                     [f"tasks.paths.data_dirs.stack='{work}/stack'", *bindings])
    start = time.perf_counter()
    it = pipeline.HostBatches(pipeline.host_dataset("stack_code", args.seq_len, args.rows,
                                                    seed=0, shard_index=0, num_shards=1))
    for position in (1, 20, 60):
      while it.taken < position:
        next(it)
      at = time.perf_counter() - start
      saved = time.perf_counter()
      size = it.save_state(os.path.join(work, f"state_{position}"))
      print(f"stack_code, {args.rows} x {args.seq_len}: batch {position} at {at:.0f} s, "
            f"state {size:,} bytes per host, saved in {time.perf_counter() - saved:.1f} s",
            flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
