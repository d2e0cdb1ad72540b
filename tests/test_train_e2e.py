"""End to end through the entry point: a few tiny steps, files written, checkpoint resume."""

import json

import pytest

from codegen2_jax import train


def run(model_dir, *extra):
  return train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={model_dir}", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, vocab):
  d = tmp_path_factory.mktemp("run")
  assert run(d) == 0
  return d


def test_writes_metrics_config_tensorboard_and_checkpoints(trained, capsys):
  records = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
  lines = [r for r in records if "loss" in r]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in lines] == [1, 2, 3, 4]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(r["eval/perplexity"] > 1 and "eval/loss/causal_lm" in r for r in evals)
  assert all("loss" in r and "learning_rate" in r and "tokens_per_s" in r for r in lines)
  # An objective appears in the steps that sampled it (never as a 0.0 loss elsewhere).
  for name in ("span_corruption", "causal_lm"):
    seen = [r for r in lines if f"loss/{name}" in r]
    assert seen and all(r[f"tokens/{name}"] > 0 and 0 <= r[f"accuracy/{name}"] <= 1
                        for r in seen)
  assert all(f"loss/{name}" not in r for r in lines for name in ("prefix_lm", "psm_infill"))
  assert lines[0]["epoch/stdlib_code"] >= 1 and lines[0]["epoch/stdlib_prose"] >= 1
  config = (trained / "config.gin").read_text()
  assert "TRAIN_STEPS = 4" in config and "train.train_steps = %TRAIN_STEPS" in config
  assert "ModelConfig.d_model = 64" in config
  assert "codegen2_mixture.causal_prob = 0.5" in config
  assert "span_corruption_example.mean_span_length = 11.5" in config
  assert list((trained / "tensorboard").glob("events.out.tfevents.*"))
  steps = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, 4]


def test_mfu_in_progress_lines_with_a_peak(tmp_path, vocab, capsys):
  assert run(tmp_path, "--gin.TRAIN_STEPS=2", "--gin.train.show_samples_at_end=False",
             "--gin.peak_flops_per_device.override=1e11") == 0
  assert "MFU " in capsys.readouterr().out
  recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  rec = [r for r in recs if "loss" in r][-1]
  assert 0 < rec["mfu"] < 1


def test_resume_continues_from_the_latest_checkpoint(trained, capsys):
  assert run(trained, "--gin.TRAIN_STEPS=6", "--gin.train.show_samples_at_end=False") == 0
  lines = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
  out = capsys.readouterr().out
  assert "steps 4..6" in out
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(trained / "checkpoints")
  data = manager.restore(6, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
  assert data == {"batches": 6}  # the data position travels with the step


def test_restore_params_and_sample(trained):
  import jax
  from flax import nnx

  import tasks
  from codegen2_jax import checkpoints, decoding, gin_config
  from codegen2_jax.models.codegen import CodeGen, ModelConfig

  gin_config.parse(["gin/runs/test_tiny.gin"], [])
  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  step, params = checkpoints.restore_params(trained / "checkpoints", abstract)
  assert step == max(int(p.name) for p in (trained / "checkpoints").iterdir()
                     if p.name.isdigit())
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  model = nnx.merge(graphdef, params)
  text = decoding.complete(model, tasks.stdlib.VOCAB, "import os\n", max_new_tokens=5)
  assert isinstance(text, str)


def test_sample_entry_point(trained, capsys):
  from codegen2_jax import sample
  assert sample.main([f"--checkpoint_dir={trained}", "--prompt_ids=2,10,11",
                      "--max_new_tokens=4", "--print_ids"]) == 0
  ids = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert isinstance(ids, list) and 1 <= len(ids) <= 4
  assert sample.main([f"--checkpoint_dir={trained}", "--prompt=def f(", "--suffix=):",
                      "--max_new_tokens=4"]) == 0
  assert sample.main([f"--checkpoint_dir={trained / 'nope'}", "--prompt=x"]) == 2


def test_run_carries_its_vocabulary_and_samples_without_the_cache(trained, tmp_path, vocab,
                                                                   capsys):
  import os
  import subprocess
  import sys
  from pathlib import Path

  from codegen2_jax import sample
  manifest = json.loads((trained / "vocab" / "manifest.json").read_text())
  assert manifest["kind"] == "sentencepiece" and manifest["prepend_eos"] is True
  copy = (trained / "vocab" / "spm.model").read_bytes()
  assert copy == Path(vocab.sentencepiece_model_file).read_bytes()
  args = [f"--checkpoint_dir={trained}", "--prompt=def f(x):\n", "--max_new_tokens=6",
          "--print_ids"]
  assert sample.main(args) == 0
  here = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 1 <= len(here) <= 6
  # Another machine: an empty vocabulary cache. The run's copy decodes the same tokens.
  empty = tmp_path / "empty_cache"
  empty.mkdir()
  proc = subprocess.run([sys.executable, "-m", "codegen2_jax.sample", *args],
                        env={**os.environ, "CODEGEN2_JAX_CACHE": str(empty)},
                        cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == here
  assert not list(empty.iterdir())  # nothing was trained or cached there


def test_resume_with_another_vocabulary_is_refused(trained, capsys):
  before = (trained / "metrics.jsonl").read_text()
  assert run(trained, "--gin.TRAIN_STEPS=8",
             "--gin.registry.family_vocabulary.stdlib='codegen2'") == 2
  errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
  assert len(errors) == 1
  assert str(trained / "vocab" / "spm.model") in errors[0]
  assert "codegen2_tokenizer/tokenizer.json" in errors[0]
  assert (trained / "metrics.jsonl").read_text() == before


def test_sample_refuses_bad_lengths_and_ids(trained, capsys):
  from codegen2_jax import sample
  for n in (0, -5):
    assert sample.main([f"--checkpoint_dir={trained}", "--prompt=x",
                        f"--max_new_tokens={n}"]) == 2
    want = f"error: --max_new_tokens must be at least 1 (got {n})"
    assert capsys.readouterr().err.strip() == want
  assert sample.main([f"--checkpoint_dir={trained}", "--prompt_ids=2,8192",
                      "--max_new_tokens=2"]) == 2
  err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
  assert err == ["error: token id 8192 is outside the model's vocabulary (ids 0..8191)"]
  assert sample.main([f"--checkpoint_dir={trained}", "--prompt_ids=2,x"]) == 2
  assert "--prompt_ids must be comma-separated integers" in capsys.readouterr().err

