"""Data tools.

    python -m codegen2_jax.data inspect --mixture=NAME [--n=K] [--json] [--split=train]
    python -m codegen2_jax.data bench --mixture=NAME [--seconds=S] [--seq_len=2048]
    python -m codegen2_jax.data prepare-vocab --mixture=NAME --vocab_size=V --out=PATH
    python -m codegen2_jax.data cache --mixture=NAME --out=DIR [--runner=DirectRunner]
        [--pipeline_option=--NAME=VALUE ...] [--min_shards=64]

`inspect` prints each model sequence after the objective (special tokens visible), with
its objective, the document it came from and the pass over its task (epoch). `bench` runs the whole pipeline (read,
tokenize, objectives, pack) and prints packed tokens/s as JSON. `prepare-vocab` trains a
SentencePiece vocabulary with our special tokens on the mixture's raw text. `cache`
writes every task of the mixture, tokenized, to DIR (local or gs://) with seqio's Apache
Beam pipeline (data/cache.py); `inspect`, `bench` and training read it with
--gin.USE_CACHED=True --gin.CACHE_DIRS="['DIR']".
Every command takes --gin_file / --gin.NAME=VALUE (e.g. data paths, objective settings)
and --module=M (repeatable) to import a module that registers more tasks.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from codegen2_jax import gin_config
from codegen2_jax.data.files import DataError


# Defines USE_CACHED and CACHE_DIRS for the data tools (run files include it too).
CACHE_GIN = "gin/data/cache.gin"


def _setup(args, files, bindings) -> None:
  import tasks  # noqa: F401
  from codegen2_jax.data import cache  # noqa: F401  (registers cache.reading with gin)
  from codegen2_jax.data import packing  # noqa: F401  (packing.pack_dataset.window)
  for module in args.module or []:
    importlib.import_module(module)
  gin_config.parse([CACHE_GIN, *files], bindings)
  from codegen2_jax.data.pipeline import check_name
  check_name(args.mixture)


def inspect_examples(name: str, n: int, split: str = "train", seq_len: int = 2048,
                     seed: int = 0) -> list[dict]:
  """The first n objective outputs of task/mixture `name`: objective, text, source."""
  import numpy as np
  import seqio

  from codegen2_jax.data import cache
  from codegen2_jax.data.objective_ids import OBJECTIVE_NAMES
  provider = seqio.get_mixture_or_task(name)
  use_cached = cache.use_cached(name)
  vocab = provider.output_features["targets"].vocabulary
  # seqio mixtures drop non-output features such as `source`, so sample the tasks here by
  # the mixture's rates.
  if isinstance(provider, seqio.Mixture):
    tasks_ = provider.tasks
    rates = np.array([provider.get_rate(t) for t in tasks_], np.float64)
  else:
    tasks_, rates = [provider], np.ones(1)
  from codegen2_jax.data.pipeline import numpy_iterator
  iters = [numpy_iterator(t.get_dataset({"targets": seq_len}, split=split, shuffle=True,
                                        seed=seed, num_epochs=None, use_cached=use_cached))
           for t in tasks_]
  rng = np.random.RandomState(seed)
  examples = (next(iters[rng.choice(len(iters), p=rates / rates.sum())]) for _ in range(n))
  out = []
  for ex in examples:
    ids = ex["targets"].tolist()
    text = vocab.decode_visible(ids) if hasattr(vocab, "decode_visible") else vocab.decode(ids)
    out.append({"objective": OBJECTIVE_NAMES[int(ex["objective"][0])], "text": text,
                "source": ex["source"].decode("utf-8", "replace"), "tokens": len(ids),
                "loss_tokens": int(ex["loss_weights"].sum()),
                "prefix_tokens": int(ex["prefix"].sum()),
                "epoch": int(ex["epoch"][0]) if "epoch" in ex else 1})
  return out


def bench(name: str, seconds: float, seq_len: int = 2048, batch_size: int = 8,
          seed: int = 0, track_epochs: bool = True) -> dict:
  """Packed tokens/s of the full pipeline for `seconds` (after a warm-up batch), as the
  trainer reads it (with the per-token epoch/task tags unless track_epochs=False)."""
  from codegen2_jax.data import pipeline
  ds = pipeline.host_dataset(name, seq_len, batch_size, seed=seed, shard_index=0,
                             num_shards=1, track_epochs=track_epochs)
  it = pipeline.numpy_iterator(ds)
  next(it)
  start = time.perf_counter()
  rows = real = 0
  while time.perf_counter() - start < seconds:
    b = next(it)
    rows += b["segment_ids"].shape[0]
    real += int((b["segment_ids"] > 0).sum())
  dt = time.perf_counter() - start
  return {"mixture": name, "seq_len": seq_len, "seconds": round(dt, 2), "rows": rows,
          "packed_tokens_per_s": real / dt, "row_tokens_per_s": rows * seq_len / dt,
          "fill": real / max(rows * seq_len, 1), "track_epochs": track_epochs}


def raw_texts(name: str, max_chars: int, split: str = "train"):
  """Raw documents of a task or mixture's sources, up to max_chars in all."""
  import seqio

  from codegen2_jax.data.pipeline import numpy_iterator
  provider = seqio.get_mixture_or_task(name)
  tasks_ = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  budget = max_chars
  per_task = max_chars // len(tasks_)
  for task in tasks_:
    used = 0
    for ex in numpy_iterator(task.source.get_dataset(split=split, shuffle=False)):
      text = ex["text"].decode("utf-8", "replace")
      yield text
      used += len(text)
      budget -= len(text)
      if used >= per_task or budget <= 0:
        break


def main(argv=None) -> int:
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.data", description=__doc__,
                               epilog=gin_config.macros_help(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  for cmd in ("inspect", "bench", "prepare-vocab", "cache"):
    p = sub.add_parser(cmd)
    p.add_argument("--mixture", required=True, help="seqio task or mixture name")
    p.add_argument("--module", action="append", help="import this module first")
    if cmd == "inspect":
      p.add_argument("--n", type=int, default=5)
      p.add_argument("--json", action="store_true")
      p.add_argument("--split", default="train")
      p.add_argument("--seq_len", type=int, default=2048)
      p.add_argument("--seed", type=int, default=0)
    elif cmd == "bench":
      p.add_argument("--seconds", type=float, default=20)
      p.add_argument("--seq_len", type=int, default=2048)
      p.add_argument("--batch_size", type=int, default=8)
      p.add_argument("--track_epochs", default="true", choices=["true", "false"],
                     help="carry the per-token epoch/task tags, as training does")
    elif cmd == "cache":
      p.add_argument("--out", required=True, help="cache directory (local or gs://)")
      p.add_argument("--runner", default="DirectRunner",
                     help="Beam runner: DirectRunner, DataflowRunner, FlinkRunner...")
      p.add_argument("--pipeline_option", action="append", default=[],
                     help="a Beam pipeline option, e.g. --pipeline_option=--project=P "
                          "(repeatable)")
      p.add_argument("--min_shards", type=int, default=64,
                     help="TFRecord files per task split (at least the hosts that read it)")
    else:
      p.add_argument("--vocab_size", type=int, required=True)
      p.add_argument("--out", required=True)
      p.add_argument("--max_chars", type=int, default=200_000_000)
  args = ap.parse_args(rest)
  try:
    _setup(args, files, bindings)
  except (gin_config.GinConfigError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    if args.command == "inspect":
      for ex in inspect_examples(args.mixture, args.n, args.split, args.seq_len, args.seed):
        if args.json:
          print(json.dumps(ex, ensure_ascii=False))
        else:
          print(f"--- {ex['objective']} | {ex['source']} | {ex['tokens']} tokens\n{ex['text']}")
    elif args.command == "cache":
      from codegen2_jax.data import cache
      try:
        summary = cache.write(args.mixture, args.out, args.runner, args.pipeline_option,
                              args.module or [], args.min_shards)
      except (OSError, ValueError) as e:  # --out not writable, bad option or setting
        if isinstance(e, FileNotFoundError):
          raise
        print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
        return 2
      print(json.dumps(summary))
    elif args.command == "bench":
      print(json.dumps(bench(args.mixture, args.seconds, args.seq_len, args.batch_size,
                             track_epochs=args.track_epochs == "true")))
    else:
      from codegen2_jax.data import vocab as V
      path = V.train_sentencepiece(raw_texts(args.mixture, args.max_chars), args.out,
                                   args.vocab_size)
      print(json.dumps({"out": str(path), "vocab_size": args.vocab_size}))
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except DataError as e:  # a source failed while reading (pipeline.numpy_iterator)
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
