"""Hugging Face parity: a random tiny torch CodeGenForCausalLM is the reference."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from codegen2_jax import checkpoints, convert, decoding  # noqa: E402
from codegen2_jax.models.codegen import CodeGen, init_cache  # noqa: E402

SHAPES = [  # (n_embd, n_head, rotary_dim, n_layer)
    (64, 4, 8, 2),     # head_dim 16
    (96, 3, 32, 2),    # head_dim 32, rotary over the whole head; heads cross qkv shards
    (128, 2, 16, 1),   # head_dim 64
]


def hf_model(n_embd, n_head, rotary_dim, n_layer, vocab=101, seed=0):
  torch.manual_seed(seed)
  cfg = transformers.CodeGenConfig(vocab_size=vocab, n_positions=64, n_embd=n_embd,
                                   n_layer=n_layer, n_head=n_head, rotary_dim=rotary_dim,
                                   n_inner=None, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=None)
  model = transformers.CodeGenForCausalLM(cfg).eval()
  with torch.no_grad():  # HF zero-inits biases and unit-inits LayerNorm: randomise all
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


def ours_from_dir(out_dir):
  import gin
  from codegen2_jax import gin_config
  gin_config.parse([str(out_dir / "config.gin")], [])
  from codegen2_jax.models.codegen import ModelConfig
  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(out_dir / "checkpoints", abstract)
  gin.clear_config()
  return nnx.merge(graphdef, params), cfg


@pytest.mark.parametrize("shape", SHAPES)
def test_hf_to_orbax_logits_incremental_and_greedy_match(tmp_path, shape):
  ref = hf_model(*shape)
  ref.save_pretrained(tmp_path / "hf")
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 0
  model, cfg = ours_from_dir(tmp_path / "o")
  ids = np.random.RandomState(0).randint(0, 101, (2, 17))
  want = hf_logits(ref, ids)
  got = np.asarray(model(jnp.asarray(ids)))
  assert np.abs(got - want).max() < 1e-4
  # incremental decoding with the KV cache, token by token
  cache = init_cache(cfg, 2, 32)
  steps = []
  for t in range(ids.shape[1]):
    logits, cache = model.decode(jnp.asarray(ids[:, t:t + 1]), jnp.full((2, 1), t), cache)
    steps.append(np.asarray(logits))
  assert np.abs(np.concatenate(steps, 1) - want).max() < 1e-4
  # greedy generation gives the same tokens
  prompt = ids[0, :5].tolist()
  ours = decoding.generate(model, [prompt], max_new_tokens=10, stop_ids=())[0]
  with torch.no_grad():
    theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                          min_new_tokens=10, pad_token_id=0)[0, 5:].tolist()
  assert ours == theirs
  # and the same through the sample command, which needs no vocabulary
  from codegen2_jax import sample
  import contextlib, io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert sample.main([f"--checkpoint_dir={tmp_path / 'o'}", "--temperature=0",
                        "--prompt_ids=" + ",".join(map(str, prompt)), "--max_new_tokens=10",
                        "--print_ids"]) == 0
  assert json.loads(buf.getvalue().strip().splitlines()[-1]) == theirs


def test_orbax_to_hf_round_trip_and_transformers_loads_it(tmp_path):
  ref = hf_model(*SHAPES[0])
  ref.save_pretrained(tmp_path / "hf")
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 0
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={tmp_path / 'o'}",
                       f"--out_dir={tmp_path / 'hf2'}"]) == 0
  back = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf2").eval()
  ids = np.random.RandomState(1).randint(0, 101, (1, 12))
  assert np.abs(hf_logits(back, ids) - hf_logits(ref, ids)).max() < 1e-5


def test_our_trained_checkpoint_exports_to_hf(tmp_path, vocab):
  """A checkpoint of our own training run loads in transformers with the same logits."""
  from codegen2_jax import train
  run = tmp_path / "run"
  assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={run}",
                     "--gin.TRAIN_STEPS=2", "--gin.train.show_samples_at_end=False"]) == 0
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={run}",
                       f"--out_dir={tmp_path / 'hf'}"]) == 0
  hf = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf").eval()
  from codegen2_jax import gin_config
  from codegen2_jax.models.codegen import ModelConfig
  gin_config.parse([str(run / "config.gin")], [])
  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(run / "checkpoints", abstract)
  ours = nnx.merge(graphdef, params)
  ids = np.random.RandomState(2).randint(3, 8000, (2, 20))
  assert np.abs(np.asarray(ours(jnp.asarray(ids))) - hf_logits(hf, ids)).max() < 1e-4


def test_mp_num_8_layout(tmp_path):
  ref = hf_model(*SHAPES[0])
  ref.save_pretrained(tmp_path / "hf")
  # Rewrite the reference's fused weights from its 4-shard layout into the 8-shard one.
  from safetensors.numpy import load_file, save_file
  sd = load_file(str(tmp_path / "hf" / "model.safetensors"))
  for name in [k for k in sd if k.endswith("qkv_proj.weight")]:
    w = sd[name]
    d = w.shape[1]
    q4 = w.reshape(4, 3, d // 4, d)
    q, v, k = (q4[:, i].reshape(d, d) for i in range(3))
    sd[name] = np.concatenate([x.reshape(8, 1, d // 8, d) for x in (q, v, k)], 1).reshape(3 * d, d)
  save_file(sd, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=8",
                       f"--out_dir={tmp_path / 'o8'}"]) == 0
  model, _ = ours_from_dir(tmp_path / "o8")
  ids = np.random.RandomState(0).randint(0, 101, (1, 9))
  ref = hf_model(*SHAPES[0])  # the untouched reference
  assert np.abs(np.asarray(model(jnp.asarray(ids))) - hf_logits(ref, ids)).max() < 1e-4
  # and reading the 8-shard file as 4 shards gives different logits: the layout matters
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o4'}"]) == 0
  wrong, _ = ours_from_dir(tmp_path / "o4")
  assert np.abs(np.asarray(wrong(jnp.asarray(ids))) - hf_logits(ref, ids)).max() > 1e-3


def test_bad_inputs_are_refused_with_a_reason(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'empty'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "no config.json" in capsys.readouterr().err

  ref = hf_model(*SHAPES[0])
  ref.save_pretrained(tmp_path / "hf")
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())

  bad = dict(cfg, model_type="gpt2")
  (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "model_type 'gpt2'" in capsys.readouterr().err

  bad = dict(cfg, n_inner=100)  # shapes no longer match the weights
  (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err
  assert "mlp.fc_in.weight" in err and "(100, 64)" in err

  (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=3",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "mp_num 3 does not divide the model width 64" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()  # nothing half-written
