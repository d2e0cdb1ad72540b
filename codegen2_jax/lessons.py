"""The paper's five lessons as runnable experiments, and a CPU-scale replication report.

    python -m codegen2_jax.lessons run --out=DIR [--only=N[,M]] [--scale=cpu]
        [--gin_file=EXTRA ...] [--gin.NAME=VALUE ...] [--eval_documents=48 ...]
    python -m codegen2_jax.lessons list

Each lesson has two arms, gin files that include one base file and change only what the
lesson varies: `gin/lessons/<arm>.gin` at the paper's 1B scale (for a TPU slice) and
`gin/lessons/cpu/<arm>.gin` on the embedded corpus. `run` trains every CPU arm with the
same compute (steps x batch x length), in its own process, then evaluates each on the
same held-out sets:

    code loss / bits per byte   stdlib_code validation documents, left to right
    code completion loss        the same documents cut in half: loss on the second half
                                given the first as the prompt, read bidirectionally by
                                a prefix-LM (as it trained), causally by a causal model
    code infill loss            the same documents in the file-level span-corruption
                                format (fixed seeds), loss on the spans only
    NL loss / bits per byte     stdlib_prose validation documents, left to right
    infill exact / pass         official HumanEval single-line infilling (the first N tasks),
                                greedy, the middle cut at <eom>; exact match and tests
    HumanEval pass@1            the first N problems, greedy, Codex truncation

and writes DIR/report.md (a table per lesson: arm, metrics, the paper's direction and
whether this run agrees) with PNG plots of the training loss curves, and the time each
run took to train and evaluate. Arms whose operative configs are identical (lesson 1's
causal arm is lesson 2's and lesson 3's) are trained once. Reruns reuse finished runs and
evaluations in DIR (and report the times measured when they were made). DIR may be a gs://
URL (the runs, their logs, the report and its plots all go there).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import os
import subprocess
import sys
import tempfile
import time

from etils import epath

from codegen2_jax import gin_config, storage

REPO = gin_config.REPO_ROOT


@dataclasses.dataclass(frozen=True)
class Lesson:
  number: int
  title: str
  arms: tuple[str, str]          # gin file stems: arm A, arm B
  labels: tuple[str, str]
  varies: frozenset[str]         # the gin bindings that may differ between the arms
  paper: str                     # the paper's finding, in our words
  metric: str                    # the metric that carries the comparison here
  expect: str                    # 'a<b', 'b<a' (lower is better) or 'b>a' (higher is better)
  # (metric, tolerance): the claim also needs arm b's `metric` (a loss) to be no more than
  # `tolerance` (relative) above arm a's; e.g. infilling gained without losing
  # left-to-right quality.
  guard: tuple[str, float] | None = None


# Lessons 3 and 4: the gain counts only if left-to-right code loss stays within this of the
# single-objective / single-domain arm's (the paper: "competitive"; ours: 2%).
GUARD = 0.02
_OBJ = frozenset({"codegen2_mixture.causal_prob",
                  "codegen2_mixture.other_objective"})
LESSONS = {
    1: Lesson(1, "Prefix-LM vs causal decoder", ("lesson1_causal", "lesson1_prefix_lm"),
              ("causal decoder, causal LM", "prefix-LM"), _OBJ | {"ModelConfig.attention"},
              "Prefix-LM brought no clear gain over a causal decoder on left-to-right code "
              "synthesis.", "completion_loss", "a<b"),
    2: Lesson(2, "Infill is not a free lunch", ("lesson2_causal", "lesson2_causal_psm"),
              ("causal LM", "causal LM + PSM infill 50/50"), _OBJ,
              "Training for infill cost some left-to-right quality: not a free lunch.",
              "code_loss", "a<b"),
    3: Lesson(3, "Objective mixture: causal LM + file-level span corruption",
              ("lesson3_causal", "lesson3_causal_span"),
              ("causal LM", "causal LM + span corruption 50/50"), _OBJ,
              "Mixing causal LM and file-level span corruption 50/50 (no task tokens) keeps "
              "left-to-right quality close to causal LM and adds infilling.",
              "infill_loss", "b<a", guard=("code_loss", GUARD)),
    4: Lesson(4, "Code + natural language vs code only", ("lesson4_code", "lesson4_code_nl"),
              ("code only", "code + natural language"), frozenset({"MIXTURE_OR_TASK_NAME"}),
              "A model trained on a mixture of code and natural language is competitive "
              "with the single-domain model in its domain and much better in the other.",
              "nl_loss", "b<a", guard=("code_loss", GUARD)),
    5: Lesson(5, "Multi-epoch training", ("lesson5_one_epoch", "lesson5_repeated"),
              ("one epoch of the subset", "the same subset, about 3 epochs"),
              frozenset({"TRAIN_STEPS"}),
              "Training for more epochs over the same data, at more compute, kept improving "
              "the model (repeated data is not wasted compute).", "code_loss", "b<a"),
}

METRICS = {  # name -> (column title, format)
    "code_loss": ("code loss", "{:.3f}"), "code_bpb": ("code bits/byte", "{:.3f}"),
    "completion_loss": ("code completion loss", "{:.3f}"),
    "nl_loss": ("NL loss", "{:.3f}"), "nl_bpb": ("NL bits/byte", "{:.3f}"),
    "infill_loss": ("code infill loss", "{:.3f}"),
    "infill_exact": ("infill exact", "{:.1%}"), "infill_pass": ("infill pass", "{:.1%}"),
    "humaneval_pass@1": ("HumanEval pass@1", "{:.1%}"), "epochs": ("epochs (max)", "{:.2f}"),
}


def arm_file(arm: str, scale: str = "cpu") -> str:
  """The gin file of one arm at `scale` ('cpu' or '1b')."""
  return f"gin/lessons/cpu/{arm}.gin" if scale == "cpu" else f"gin/lessons/{arm}.gin"


def operative_bindings(gin_files, bindings=()) -> dict[str, str]:
  """{binding: value} of the full config that `gin_files` + `bindings` parse to."""
  import tasks  # noqa: F401
  from codegen2_jax import trainer  # noqa: F401
  import gin
  gin_config.parse(list(gin_files), list(bindings))
  out = {}
  for line in gin.config_str().splitlines():
    if " = " in line and not line.startswith(("#", " ")):
      key, value = line.split(" = ", 1)
      out[key.strip()] = value.strip()
  return out


# ----------------------------------------------------------------------------------------
# Training and evaluation of one arm


def train_arm(run_dir: epath.Path, files: list[str], bindings: list[str]) -> None:
  """Trains (or resumes) one arm in its own process; the log goes to run_dir/train.log."""
  run_dir.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "codegen2_jax.train", *[f"--gin_file={f}" for f in files],
         f"--model_dir={run_dir}",
         *["--gin.{}={}".format(*(x.strip() for x in b.split("=", 1))) for b in bindings]]
  (run_dir / "command.txt").write_text(" ".join(cmd[1:]) + "\n")
  log_path = run_dir / "train.log"
  if not storage.is_remote(log_path):
    with open(log_path, "a") as log:
      proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
  else:  # a gs:// object cannot be appended to: log locally, then rewrite it whole
    with tempfile.TemporaryFile() as log:
      try:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
      finally:
        log.seek(0)
        earlier = log_path.read_bytes() if log_path.exists() else b""
        log_path.write_bytes(earlier + log.read())
  if proc.returncode:
    raise RuntimeError(f"training {run_dir.name} failed (exit {proc.returncode}); see "
                       f"{run_dir / 'train.log'}")


def evaluate_arm(run_dir: epath.Path, sizes: dict) -> dict:
  """The held-out metrics of one trained arm (see the module docstring)."""
  from codegen2_jax import restore
  from codegen2_jax.eval import humaneval, infilling, perplexity, sandbox

  r = restore.load(os.fspath(run_dir))
  seq_len = min(r.model.cfg.max_len, 256)
  out = {"checkpoint_step": r.step}
  for key, task in (("code", "stdlib_code"), ("nl", "stdlib_prose")):
    p = perplexity.evaluate(r.model, r.vocab, task, "validation", sizes["eval_documents"],
                            seq_len=seq_len, batch_size=8, infill=key == "code",
                            completion=key == "code")
    out[f"{key}_loss"], out[f"{key}_bpb"] = p["loss"], p["bits_per_byte"]
    if key == "code":
      out["infill_loss"], out["completion_loss"] = p["infill_loss"], p["completion_loss"]
  problems = humaneval.read_problems()
  limits = sandbox.Limits(timeout_s=5.0)
  new = sizes["max_new_tokens"]
  single = infilling.read_tasks("single-line")
  tasks_ = list(single.values())[:sizes["eval_infill"]]
  samples = list(infilling.generate(r.model, r.vocab, tasks_, max_new_tokens=new))
  figures = infilling.summarize(infilling.score(samples, single, limits), single, [1])
  out["infill_exact"] = figures["single-line"]["exact_match"]
  out["infill_pass"] = figures["single-line"]["pass@1"]
  chosen = dict(list(problems.items())[:sizes["eval_problems"]])
  samples = list(humaneval.generate(r.model, r.vocab, chosen, max_new_tokens=2 * new))
  out["humaneval_pass@1"] = humaneval.pass_at_k(humaneval.score(samples, chosen, limits),
                                                [1])["pass@1"]
  epochs = [v for rec in _metrics(run_dir) for k, v in rec.items() if k.startswith("epoch/")]
  out["epochs"] = max(epochs) if epochs else float("nan")
  return out


def _metrics(run_dir: epath.Path) -> list[dict]:
  path = run_dir / "metrics.jsonl"
  return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# ----------------------------------------------------------------------------------------
# The report


# Relative differences below this are within run-to-run noise at CPU scale (one seed).
NOISE = 0.005


def verdict(lesson: Lesson, a: dict, b: dict) -> str:
  """Whether arms a and b (metric dicts) agree with the paper's direction."""
  x, y = a[lesson.metric], b[lesson.metric]
  fmt = METRICS[lesson.metric][1]
  both = (f"{METRICS[lesson.metric][0]} {fmt.format(x)} ({lesson.labels[0]}) vs "
          f"{fmt.format(y)} ({lesson.labels[1]})")
  if abs(x - y) <= NOISE * max(abs(x), abs(y)):
    return f"inconclusive (the arms differ by less than {NOISE:.1%}): {both}"
  ok = {"a<b": x < y, "b<a": y < x, "b>a": y > x}[lesson.expect]
  if not ok or lesson.guard is None:
    return f"{'agrees' if ok else 'disagrees'}: {both}"
  name, tol = lesson.guard
  ga, gb = a[name], b[name]
  kept = gb <= ga * (1 + tol)
  cost = (f"{METRICS[name][0]} {ga:.3f} vs {gb:.3f} ({(gb - ga) / ga:+.1%}; "
          f"{'within' if kept else 'beyond'} the {tol:.0%} allowed)")
  if kept:
    return f"agrees: {both}; {cost}"
  return f"disagrees: {both}, but at a cost: {cost}"


def plot(lesson: Lesson, runs: dict[str, epath.Path], path: epath.Path) -> None:
  """PNG of the training loss curves of a lesson's arms."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
  for arm, label in zip(lesson.arms, lesson.labels):
    recs = [r for r in _metrics(runs[arm]) if "loss" in r]
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (its own objective mix)")
  ax.set_title(f"Lesson {lesson.number}: {lesson.title}", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  # matplotlib writes local files: a temporary PNG, then copied (local or gs://).
  with tempfile.TemporaryDirectory() as scratch:
    local = os.path.join(scratch, "plot.png")
    fig.savefig(local)
    plt.close(fig)
    storage.path(path).write_bytes(storage.path(local).read_bytes())


def write_report(out: epath.Path, lessons: list[Lesson], runs: dict[str, epath.Path],
                 results: dict[str, dict], header: dict) -> epath.Path:
  """DIR/report.md with a table per lesson and its plot; returns the path."""
  lines = ["# CodeGen2 lessons at CPU scale", "",
           f"Run {header['date']} on {header['machine']}: `{header['command']}`", "",
           f"Every arm: {header['compute']} (except where a lesson varies the steps); "
           f"seed {header['seed']}. Held-out sets: "
           f"{header['eval']}.", "",
           "Arms with identical operative configs share one training run. Lower loss and "
           "bits/byte are better; higher exact match and pass rates are better. At this "
           "scale HumanEval and infill pass rates are expected to be near zero; the losses "
           "carry the comparison.", ""]
  cols = list(METRICS)
  for lesson in lessons:
    lines += [f"## Lesson {lesson.number}: {lesson.title}", "",
              f"Varies only: {', '.join(sorted(lesson.varies))}.", "",
              "| arm | run | " + " | ".join(METRICS[c][0] for c in cols) + " |",
              "|---|---|" + "---|" * len(cols)]
    for arm, label in zip(lesson.arms, lesson.labels):
      res = results[arm]
      vals = [METRICS[c][1].format(res[c]) for c in cols]
      lines.append(f"| {label} | {runs[arm].name} | " + " | ".join(vals) + " |")
    steps = [results[arm].get("checkpoint_step") for arm in lesson.arms]
    if steps[0] != steps[1]:  # lesson 5 compares compute budgets on purpose
      lines += ["", "Steps trained: " + ", ".join(
          f"{label} {n}" for label, n in zip(lesson.labels, steps)) + "."]
    lines += ["", f"Paper: {lesson.paper}", "",
              f"Here: {verdict(lesson, results[lesson.arms[0]], results[lesson.arms[1]])}.",
              "", f"![lesson {lesson.number} loss curves](lesson{lesson.number}.png)", ""]
    plot(lesson, runs, out / f"lesson{lesson.number}.png")
  lines += _timing_lines(header["timing"], header["wall_seconds"])
  path = out / "report.md"
  path.write_text("\n".join(lines))
  return path


def _timing_lines(timing: dict[str, tuple], wall_seconds: float) -> list[str]:
  def fmt(s):
    return "-" if s is None else f"{s:.0f}"
  known = [s for pair in timing.values() for s in pair if s is not None]
  lines = ["## Time", "",
           "Seconds each run took when it was trained and evaluated (- where this output "
           "directory does not record it).", "",
           "| run | training (s) | evaluation (s) |", "|---|---|---|"]
  lines += [f"| {name} | {fmt(t)} | {fmt(e)} |" for name, (t, e) in timing.items()]
  lines += ["", f"Sum over the runs: {sum(known) / 60:.1f} min. This invocation (which "
            f"reuses what was already trained or evaluated): {wall_seconds / 60:.1f} min "
            "wall time, report included.", ""]
  return lines


# ----------------------------------------------------------------------------------------
# The driver


def run(out: epath.Path, only: list[int] | None, extra_files: list[str], bindings: list[str],
        sizes: dict, command: str) -> epath.Path:
  """Trains and evaluates the arms of the chosen lessons; writes out/report.md."""
  invoked = time.time()
  out.mkdir(parents=True, exist_ok=True)
  lessons = [LESSONS[n] for n in (only or sorted(LESSONS))]
  runs: dict[str, epath.Path] = {}
  by_config: dict[tuple, epath.Path] = {}
  for lesson in lessons:
    for arm in lesson.arms:
      files = [arm_file(arm)] + extra_files
      operative = operative_bindings(files, bindings)
      config = tuple(sorted(operative.items()))
      if config not in by_config:
        run_dir = by_config[config] = out / "runs" / arm
        if (run_dir / "checkpoints" / operative["TRAIN_STEPS"]).is_dir():
          print(f"[lessons] reusing {run_dir} (trained to step {operative['TRAIN_STEPS']})",
                flush=True)
        else:
          start = time.time()
          print(f"[lessons] training {arm} -> {run_dir}", flush=True)
          train_arm(run_dir, files, bindings)
          seconds = time.time() - start
          (run_dir / "train_time.json").write_text(json.dumps({"seconds": seconds}))
          print(f"[lessons] {arm} trained in {seconds:.0f}s", flush=True)
      runs[arm] = by_config[config]
  results = {}
  timing: dict[str, tuple] = {}
  for arm, run_dir in runs.items():
    cache = run_dir / "eval.json"
    saved = json.loads(cache.read_text()) if cache.exists() else {}
    if (saved.get("sizes") != sizes or saved.get("step") is None
        or not set(METRICS) <= set(saved.get("metrics", {}))):
      print(f"[lessons] evaluating {run_dir.name}", flush=True)
      start = time.time()
      res = evaluate_arm(run_dir, sizes)
      saved = {"sizes": sizes, "step": res["checkpoint_step"], "metrics": res,
               "seconds": time.time() - start}
      cache.write_text(json.dumps(saved, indent=1))
    results[arm] = saved["metrics"]
    timing[run_dir.name] = (_train_seconds(run_dir), saved.get("seconds"))
  gin_config.parse([arm_file(lessons[0].arms[0])] + extra_files, bindings)
  steps, batch, seq = (gin_config.macro(m) for m in ("TRAIN_STEPS", "BATCH_SIZE", "SEQ_LEN"))
  header = {
      "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
      "machine": f"{platform.machine()}, {_cpu_count()} CPU cores",
      "command": command,
      "compute": f"{steps} steps x {batch} rows x {seq} tokens "
                 f"({steps * batch * seq / 1e6:.2f}M token positions)",
      "seed": gin_config.macro("SEED"),
      "eval": f"{sizes['eval_documents']} validation documents each of stdlib_code and "
              f"stdlib_prose; the first {sizes['eval_infill']} official HumanEval single-line "
              f"infilling tasks; the first {sizes['eval_problems']} HumanEval problems",
      "timing": timing,
      "wall_seconds": time.time() - invoked,
  }
  return write_report(out, lessons, runs, results, header)


def _train_seconds(run_dir: epath.Path) -> float | None:
  path = run_dir / "train_time.json"
  return json.loads(path.read_text())["seconds"] if path.exists() else None


def _cpu_count() -> int:
  import os
  return os.cpu_count() or 1


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  files, bindings, rest = gin_config.split_argv(argv)
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.lessons", description=__doc__,
                               epilog=gin_config.macros_help(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  p = sub.add_parser("run")
  p.add_argument("--out", required=True)
  p.add_argument("--only", default=None, help="comma-separated lesson numbers (1-5)")
  p.add_argument("--eval_documents", type=int, default=48)
  p.add_argument("--eval_infill", type=int, default=120)
  p.add_argument("--eval_problems", type=int, default=40)
  p.add_argument("--max_new_tokens", type=int, default=48)
  sub.add_parser("list")
  args = ap.parse_args(rest)
  if args.command == "list":
    for lesson in LESSONS.values():
      print(f"{lesson.number}. {lesson.title}: " + " vs ".join(
          f"{arm_file(a)} ({label})" for a, label in zip(lesson.arms, lesson.labels)))
    return 0
  try:
    only = [int(x) for x in args.only.split(",")] if args.only else None
    if only and not set(only) <= set(LESSONS):
      raise ValueError(f"--only takes lesson numbers {sorted(LESSONS)}, got {args.only}")
    sizes = {k: getattr(args, k) for k in ("eval_documents", "eval_infill", "eval_problems",
                                           "max_new_tokens")}
    out = storage.check_writable_dir(args.out, "--out")
    report = run(out, only, files, bindings, sizes,
                 "python -m codegen2_jax.lessons " + " ".join(argv))
  except (ValueError, gin_config.GinConfigError, RuntimeError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"[lessons] report: {report}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
