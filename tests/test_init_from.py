"""train.init_from: a new run starts from another checkpoint's parameters (a run's, a
converted Hugging Face one, local or gs://) with a fresh optimizer at step 0."""

import dataclasses
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codegen2_jax import checkpoints, init_from, storage, train
from codegen2_jax.data import vocab as V

TINY = ["--gin_file=gin/runs/test_tiny.gin", "--gin.train.show_samples_at_end=False",
        "--gin.train.eval_every=0"]
# Run A learns fast, so its parameters are far from a fresh model's.
FAST = ["--gin.learning_rate_schedule.peak=1e-2", "--gin.learning_rate_schedule.warmup_steps=1"]


def logged_losses(model_dir):
  out = {}
  for line in (storage.path(model_dir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, vocab):
  """A tiny run of 6 steps with its checkpoint at step 6."""
  d = tmp_path_factory.mktemp("init_from") / "a"
  assert train.main([*TINY, *FAST, f"--model_dir={d}", "--gin.TRAIN_STEPS=6",
                     "--gin.CHECKPOINT_EVERY=6"]) == 0
  return d


@pytest.fixture(scope="module")
def fresh(run_a):
  """(model config, a fresh sharded train state of run A's shape, seed 1)."""
  import tasks  # noqa: F401  (A's config.gin binds the stock tasks)
  from codegen2_jax import gin_config, partitioning, trainer
  from codegen2_jax.models.codegen import ModelConfig
  gin_config.parse([str(run_a / "config.gin")], [])
  cfg = ModelConfig()
  _, _, state, _, _ = trainer.build_train_step(
      cfg, 1, 10, partitioning.make_mesh(), partitioning.logical_axis_rules())
  return cfg, state


def a_params(run_a, state):
  return checkpoints.restore_params(run_a / "checkpoints", state["params"])[1]


def test_a_new_run_starts_from_the_runs_parameters_and_later_resumes_its_own(
    run_a, tmp_path, capsys):
  b = tmp_path / "b"
  flags = [*TINY, f"--model_dir={b}", "--gin.CHECKPOINT_EVERY=1",
           f"--gin.train.init_from='{run_a}'"]
  assert train.main([*flags, "--gin.TRAIN_STEPS=1"]) == 0
  out = capsys.readouterr().out
  assert f"initialised parameters from {run_a} (step 6); optimizer state fresh" in out
  assert "steps 0..1" in out
  a, got = logged_losses(run_a), logged_losses(b)
  # B's step 1 runs at learning rate 0: its loss is A's final parameters' on B's first
  # batch, nearer where A ended than where a fresh model (A's step 1, same batch) starts.
  assert a[1] - a[6] > 0.5, a
  assert a[1] - got[1] > 1.0 and abs(got[1] - a[6]) < abs(got[1] - a[1]), (got, a)
  # Resumed, B continues from its own step 1 (not from A's parameters again).
  assert train.main([*flags, "--gin.TRAIN_STEPS=2"]) == 0
  out = capsys.readouterr().out
  assert "steps 1..2" in out and "initialised parameters" not in out, out


def test_init_params_restores_into_the_states_shardings_with_a_fresh_optimizer(
    run_a, fresh, vocab, capsys):
  _, state = fresh
  for where in (run_a, run_a / "checkpoints"):  # a model_dir or its checkpoints/ folder
    got = init_from.init_params(state, str(where), vocab=vocab)
    assert f"initialised parameters from {where} (step 6)" in capsys.readouterr().out
    for x, y, old in zip(jax.tree.leaves(got["params"]), leaves(a_params(run_a, state)),
                         jax.tree.leaves(state["params"])):
      np.testing.assert_array_equal(np.asarray(x), y)
      assert x.sharding == old.sharding
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(got["params"]),
                                                        leaves(state["params"])))
    assert int(got["step"]) == 0
    assert all(not np.any(x) for x in leaves(got["opt_state"]))  # counts and moments 0


def test_init_from_a_converted_hugging_face_checkpoint(tmp_path, caplog):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from codegen2_jax import convert
  from codegen2_jax.models.codegen import CodeGen
  torch.manual_seed(0)
  hf = transformers.CodeGenForCausalLM(transformers.CodeGenConfig(
      vocab_size=101, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
      bos_token_id=None, eos_token_id=None, pad_token_id=None)).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  hf.save_pretrained(tmp_path / "hf")
  cfg = convert.hf_to_orbax(tmp_path / "hf", tmp_path / "o", mp_num=4).cfg
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  state = {"step": jnp.zeros((), jnp.int32), "params": abstract}
  with caplog.at_level(logging.WARNING):
    got = init_from.init_params(state, str(tmp_path / "o"))
  assert "carries no vocabulary" in caplog.text  # a directory without a tokenizer
  ids = np.random.RandomState(0).randint(0, 101, (2, 9))
  with torch.no_grad():
    want = hf(torch.tensor(ids)).logits.numpy()
  logits = np.asarray(nnx.merge(graphdef, got["params"])(jnp.asarray(ids)))
  assert np.abs(logits - want).max() < 1e-4


def test_another_model_shape_names_the_parameter_and_both_shapes(run_a, fresh):
  cfg, state = fresh
  from codegen2_jax.models.codegen import CodeGen
  other = nnx.state(nnx.eval_shape(lambda: CodeGen(dataclasses.replace(cfg, d_ff=128),
                                                   nnx.Rngs(0))), nnx.Param)
  with pytest.raises(checkpoints.ShapeMismatchError) as e:
    init_from.init_params(state, str(run_a), abstract_params=other)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith("train.init_from: ")
  assert "fc_in" in msg and "[2, 64, 256]" in msg and "[2, 64, 128]" in msg, msg


def test_another_vocabulary_fails_naming_both_and_none_warns(run_a, fresh, vocab, tmp_path,
                                                               caplog):
  _, state = fresh
  d = tmp_path / "a"
  shutil.copytree(run_a, d)
  manifest = d / "vocab" / V.MANIFEST
  m = json.loads(manifest.read_text())
  m["sha256"] = "ab" * 32
  manifest.write_text(json.dumps(m))
  with pytest.raises(V.RunVocabularyError) as e:
    init_from.init_params(state, str(d), vocab=vocab)
  msg = str(e.value)
  assert "\n" not in msg and "abababababab" in msg and V.sha256_file(
      V.vocabulary_file(vocab)[1])[:12] in msg and str(d / "vocab" / "spm.model") in msg, msg
  shutil.rmtree(d / "vocab")
  with caplog.at_level(logging.WARNING):
    init_from.init_params(state, str(d), vocab=vocab)
  assert f"{d} carries no vocabulary" in caplog.text


def test_a_missing_dir_is_one_line_naming_it(tmp_path, vocab, capsys):
  missing = tmp_path / "nowhere"
  assert train.main([*TINY, f"--model_dir={tmp_path / 'b'}", "--gin.TRAIN_STEPS=1",
                     f"--gin.train.init_from='{missing}'"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: train.init_from: ") and str(missing) in err, err
  assert len(err.splitlines()) == 1, err
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(init_from.InitFromError, match=f"no checkpoint in {empty}"):
    init_from.init_params({"params": {}}, str(empty))


def test_init_from_a_run_on_gcs(run_a, fresh, vocab, gcs_dir, tmp_path, monkeypatch, capsys):
  _, state = fresh
  monkeypatch.chdir(tmp_path)
  # A's model_dir on gs:// as a run there leaves it: the checkpoint saved there by orbax
  # (on GCS it marks a finished step with commit_success.txt), the vocabulary copied.
  manager = checkpoints.make_manager(run_a / "checkpoints")
  step, a_state, data = checkpoints.restore(manager, state)
  checkpoints.finish(manager)
  manager = checkpoints.make_manager(storage.join(gcs_dir, "checkpoints"), async_save=False)
  checkpoints.save(manager, step, a_state, data)
  checkpoints.finish(manager)
  for name in (f"vocab/{V.MANIFEST}", "vocab/spm.model", "config.gin"):
    target = storage.path(gcs_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((run_a / name).read_bytes())
  got = init_from.init_params(state, gcs_dir, vocab=vocab)
  assert f"initialised parameters from {gcs_dir} (step 6)" in capsys.readouterr().out
  for x, y in zip(leaves(got["params"]), leaves(a_params(run_a, state))):
    np.testing.assert_array_equal(x, y)
  assert not [n for n in os.listdir(tmp_path) if n.startswith("gs:")]
