"""HumanEval-Infilling, derived deterministically from HumanEval's canonical solutions.

The rule (the canonical solution split into lines, newlines kept):

    single-line   every non-blank line is a middle: 1033 tasks over the 164 problems
                  (the count of the official HumanEval-SingleLineInfilling)
    multi-line    every block of two or more consecutive lines whose first and last lines
                  are non-blank is a middle: 4782 tasks

For a middle lines[i:j] the model sees prefix = prompt + lines[:i] and suffix =
lines[j:], in the CodeGen2 infill format `<|endoftext|> prefix <mask_1> suffix
<|endoftext|> <sep> <mask_1>`, and its middle is cut only at <eom> (or <|endoftext|>):
line-agnostic, as in the paper. A task passes when prefix + middle + suffix passes the
problem's tests in the sandbox; exact match compares the middle with the true one.
Task ids read `HumanEval/0/single/3` (middle = line 3) or `HumanEval/0/multi/2-5`
(lines 2..4).
"""

from __future__ import annotations

from typing import Iterator, Sequence

from codegen2_jax.eval import humaneval, sandbox

KINDS = ("single", "multi")


def tasks(problems: dict[str, dict], kind: str) -> list[dict]:
  """The infilling tasks of `kind` ('single' or 'multi'), in problem and line order:
  {'task_id', 'problem_id', 'prefix', 'suffix', 'middle'}."""
  if kind not in KINDS:
    raise ValueError(f"unknown infilling kind {kind!r}; expected one of {KINDS}")
  out = []
  for pid, problem in problems.items():
    lines = problem["canonical_solution"].splitlines(keepends=True)
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if kind == "single":
      spans = [(i, i + 1) for i in filled]
    else:
      spans = [(i, j + 1) for i in filled for j in filled if j > i]
    for i, j in spans:
      out.append({"task_id": f"{pid}/{kind}/{i}" if kind == "single" else
                  f"{pid}/{kind}/{i}-{j - 1}",
                  "problem_id": pid,
                  "prefix": problem["prompt"] + "".join(lines[:i]),
                  "suffix": "".join(lines[j:]),
                  "middle": "".join(lines[i:j])})
  return out


def generate(model, vocab, infill_tasks: Sequence[dict], max_new_tokens: int = 128,
             batch_size: int = 8, num_samples: int = 1, **kw) -> Iterator[dict]:
  """{'task_id', 'completion'} (the generated middle) for each task."""
  from codegen2_jax import decoding
  from codegen2_jax.data import vocab as V

  by_id = {t["task_id"]: t for t in infill_tasks}
  ids = V.special_ids(vocab)

  def prompt_ids(task_id):
    t = by_id[task_id]
    return decoding.infill_prompt(vocab, t["prefix"], t["suffix"])

  # A prompt too long for the model is cut from the left (the start of the prefix).
  prompts = [(t["task_id"], t["task_id"]) for t in infill_tasks]
  for tid, text in humaneval.sample_prompts(model, vocab, prompts, num_samples,
                                            max_new_tokens, batch_size, stop_strings=(),
                                            stop_ids=(ids.eom, ids.eos),
                                            prompt_ids=prompt_ids, **kw):
    yield {"task_id": tid, "completion": text}


def score(samples: Sequence[dict], infill_tasks: Sequence[dict], problems: dict[str, dict],
          limits: sandbox.Limits, workers: int | None = None) -> list[dict]:
  """Each sample with 'passed', 'result' and 'exact_match' added."""
  by_id = {t["task_id"]: t for t in infill_tasks}
  unknown = sorted({s["task_id"] for s in samples} - set(by_id))
  if unknown:
    raise ValueError(f"samples name infilling tasks that do not exist: {unknown[:5]}")
  programs = []
  for s in samples:
    t = by_id[s["task_id"]]
    p = problems[t["problem_id"]]
    code = t["prefix"] + s["completion"] + t["suffix"]
    programs.append(code + "\n" + p["test"] + "\n" + f"check({p['entry_point']})")
  verdicts = sandbox.run_many(programs, limits, workers=workers)
  return [dict(s, passed=v.passed, result=v.result,
               exact_match=s["completion"] == by_id[s["task_id"]]["middle"])
          for s, v in zip(samples, verdicts)]
