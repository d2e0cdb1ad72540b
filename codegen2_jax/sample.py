"""Sampling entry point: restore a checkpoint's parameters and complete or infill.

    python -m codegen2_jax.sample --checkpoint_dir=DIR --prompt='def f(x):' [--suffix=...]
        [--temperature=0.8 --top_p=0.95 --top_k=0 --seed=0] [--stop='\ndef' ...]
    python -m codegen2_jax.sample --checkpoint_dir=DIR --prompt_ids=1,2,3 --print_ids

DIR is a run's model_dir (or its checkpoints/ folder), local or gs://; the model shape is
read from the run's `config.gin`, or from `--gin_file`s, and the vocabulary is the run's
own copy (DIR/vocab/). `--suffix` asks for an infill in the CodeGen2 format (the middle, cut at
<eom>). `--prompt_ids` needs no vocabulary; `--print_ids` prints the generated ids.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys

from codegen2_jax import gin_config


def main(argv=None) -> int:
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.sample", description=__doc__,
                               epilog=gin_config.macros_help(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint_dir", required=True)
  ap.add_argument("--prompt")
  ap.add_argument("--suffix")
  ap.add_argument("--prompt_ids", help="comma-separated token ids (no vocabulary needed)")
  ap.add_argument("--print_ids", action="store_true", help="print generated ids as JSON")
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--top_k", type=int, default=0, help="sample among the k most likely")
  ap.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass")
  ap.add_argument("--stop", action="append", default=[],
                  help="stop string (repeatable; \\n and \\t escapes read): the "
                       "completion ends before it")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  ap.add_argument("--stop_ids", default=None,
                  help="comma-separated ids that end generation (default: none with "
                       "--prompt_ids, <|endoftext|> / <eom> of our vocabulary otherwise)")
  args = ap.parse_args(rest)
  # '\n' typed in a shell arrives as backslash + n: read the usual escapes.
  args.stop = [codecs.decode(s, "unicode_escape") for s in args.stop]
  if (args.prompt is None) == (args.prompt_ids is None):
    ap.error("give exactly one of --prompt and --prompt_ids")
  if args.max_new_tokens < 1:
    return _error(f"--max_new_tokens must be at least 1 (got {args.max_new_tokens})")
  try:
    ids = _int_list(args.prompt_ids, "--prompt_ids")
    stops = _int_list(args.stop_ids, "--stop_ids")
  except ValueError as e:
    return _error(str(e))
  from codegen2_jax import decoding, restore
  from codegen2_jax.data import vocab as V
  try:
    r = restore.load(args.checkpoint_dir, files, bindings, args.step)
  except restore.RestoreError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  try:
    n = r.model.cfg.vocab_size
    bad = [i for i in ids + stops if not 0 <= i < n]
    if bad:
      return _error(f"token id {bad[0]} is outside the model's vocabulary (ids 0..{n - 1})")
    if args.prompt_ids is not None:
      out = decoding.generate(r.model, [ids], args.max_new_tokens, stop_ids=stops, **kw)[0]
      print(json.dumps(out) if args.print_ids else out)
      return 0
    if r.vocab is None:
      return _error("the run carries no vocabulary and its config names no "
                    "MIXTURE_OR_TASK_NAME; use --prompt_ids")
    if args.print_ids:  # the generated ids, up to and including the stop id
      special = V.special_ids(r.vocab)
      if args.suffix is not None:
        prompt = decoding.infill_prompt(r.vocab, args.prompt, args.suffix)
        default_stops = (special.eom, special.eos)
      else:
        prompt = decoding.completion_prompt(r.vocab, args.prompt)
        default_stops = (special.eos,)
      out = decoding.generate(r.model, [prompt], args.max_new_tokens,
                              stop_ids=tuple(stops) or default_stops, **kw)[0]
      print(json.dumps(out))
      return 0
    if args.suffix is not None:
      print(decoding.infill(r.model, r.vocab, args.prompt, args.suffix, args.max_new_tokens,
                            **kw))
    else:
      print(args.prompt + decoding.complete(r.model, r.vocab, args.prompt,
                                            args.max_new_tokens, stop_strings=args.stop, **kw))
  except ValueError as e:  # prompt too long for the model, bad sampling settings
    return _error(str(e))
  return 0


def _error(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return 2


def _int_list(text: str | None, flag: str) -> list[int]:
  """'1, 2,3' -> [1, 2, 3]; None -> []."""
  try:
    return [int(x) for x in (text or "").split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"{flag} must be comma-separated integers (got {text!r})") from None


if __name__ == "__main__":
  sys.exit(main())
