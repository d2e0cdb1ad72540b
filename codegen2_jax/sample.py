"""Sampling entry point: restore a checkpoint's parameters and complete or infill.

    python -m codegen2_jax.sample --checkpoint_dir=DIR --prompt='def f(x):' [--suffix=...]
    python -m codegen2_jax.sample --checkpoint_dir=DIR --prompt_ids=1,2,3 --print_ids

DIR is a run's model_dir (or its checkpoints/ folder); the model shape is read from the
run's `config.gin`, or from `--gin_file`s. `--suffix` asks for an infill in the CodeGen2
format (the middle, cut at <eom>). `--prompt_ids` needs no vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from codegen2_jax import gin_config


def _dirs(path: str) -> tuple[Path, Path]:
  """(checkpoints dir, run dir) for a model_dir or its checkpoints/ subfolder."""
  p = Path(path).absolute()
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", p
  return p, p.parent


def main(argv=None) -> int:
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.sample", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint_dir", required=True)
  ap.add_argument("--prompt")
  ap.add_argument("--suffix")
  ap.add_argument("--prompt_ids", help="comma-separated token ids (no vocabulary needed)")
  ap.add_argument("--print_ids", action="store_true", help="print generated ids as JSON")
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top_k", type=int, default=0)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--stop_ids", default=None,
                  help="comma-separated ids that end generation (default: none with "
                       "--prompt_ids, <|endoftext|> / <eom> of our vocabulary otherwise)")
  args = ap.parse_args(rest)
  if (args.prompt is None) == (args.prompt_ids is None):
    ap.error("give exactly one of --prompt and --prompt_ids")
  ckpt_dir, run_dir = _dirs(args.checkpoint_dir)
  if not ckpt_dir.is_dir():
    print(f"error: no checkpoint directory at {ckpt_dir}", file=sys.stderr)
    return 2
  if not files:
    if not (run_dir / "config.gin").is_file():
      print(f"error: {run_dir / 'config.gin'} not found; pass --gin_file for the model",
            file=sys.stderr)
      return 2
    files = [str(run_dir / "config.gin")]
  import tasks  # noqa: F401
  from codegen2_jax import trainer  # noqa: F401  (config.gin binds trainer settings)
  try:
    gin_config.parse(files, bindings)
  except gin_config.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2

  from flax import nnx

  from codegen2_jax import checkpoints, decoding
  from codegen2_jax.models.codegen import CodeGen, ModelConfig

  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  try:
    _, params = checkpoints.restore_params(ckpt_dir, abstract, args.step)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  model = nnx.merge(graphdef, params)
  kw = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed)

  if args.prompt_ids is not None:
    ids = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
    stops = tuple(int(x) for x in (args.stop_ids or "").split(",") if x.strip())
    out = decoding.generate(model, [ids], args.max_new_tokens, stop_ids=stops, **kw)[0]
    print(json.dumps(out) if args.print_ids else out)
    return 0

  import seqio
  vocab = seqio.get_mixture_or_task(
      gin_config.macro("MIXTURE_OR_TASK_NAME")).output_features["targets"].vocabulary
  if args.suffix is not None:
    print(decoding.infill(model, vocab, args.prompt, args.suffix, args.max_new_tokens, **kw))
  else:
    print(args.prompt + decoding.complete(model, vocab, args.prompt, args.max_new_tokens, **kw))
  return 0


if __name__ == "__main__":
  sys.exit(main())
