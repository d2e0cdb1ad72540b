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
  assert "loss/span_corruption" in lines[0] and "loss/causal_lm" in lines[0]
  assert 0 <= lines[-1]["accuracy/causal_lm"] <= 1
  assert lines[0]["epoch/stdlib_code"] >= 1 and lines[0]["epoch/stdlib_prose"] >= 1
  config = (trained / "config.gin").read_text()
  assert "TRAIN_STEPS = 4" in config and "train.train_steps = %TRAIN_STEPS" in config
  assert "ModelConfig.d_model = 64" in config
  assert "codegen2_mixture.causal_prob = 0.5" in config
  assert "span_corruption_example.max_spans = 16" in config
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
