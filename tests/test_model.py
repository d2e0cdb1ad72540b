"""Model: shapes, parameter counts, masks (causal, packed, padding, prefix), KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codegen2_jax.models import attention
from codegen2_jax.models.codegen import CodeGen, ModelConfig, count_params, init_cache


def tiny(**kw):
  base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, head_dim=8, rotary_dim=4,
              d_ff=64, max_len=64)
  base.update(kw)
  cfg = ModelConfig(**base)
  return CodeGen(cfg, nnx.Rngs(0)), cfg


def tokens(b, n, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(5, 97, (b, n)), jnp.int32)


def test_shapes_and_dtype():
  model, cfg = tiny()
  logits = model(tokens(3, 11))
  assert logits.shape == (3, 11, cfg.vocab_size) and logits.dtype == jnp.float32
  bf, _ = tiny(dtype="bfloat16")
  assert bf(tokens(1, 5)).dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(bf, nnx.Param)))


@pytest.mark.parametrize("name,expected", [("1b", 1.02e9), ("3_7b", 3.64e9), ("7b", 6.86e9)])
def test_paper_size_parameter_counts(name, expected):
  sizes = {"1b": (2048, 16, 16, 128, 8192), "3_7b": (4096, 16, 16, 256, 16384),
           "7b": (4096, 32, 16, 256, 16384)}
  d, n, h, hd, f = sizes[name]
  cfg = ModelConfig(vocab_size=51200, d_model=d, n_layers=n, n_heads=h, head_dim=hd, d_ff=f)
  count = count_params(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))))
  assert abs(count - expected) / expected < 0.01


def test_every_parameter_has_logical_axes():
  model, _ = tiny()
  specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
  for path, spec in jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
    assert len(spec) >= 1, path


def test_causal_mask_future_tokens_never_change_the_past():
  model, _ = tiny()
  a = tokens(1, 16)
  b = a.at[0, 10].set((a[0, 10] + 1) % 97)
  la, lb = model(a), model(b)
  np.testing.assert_allclose(la[0, :10], lb[0, :10], atol=1e-6)
  assert not np.allclose(la[0, 10:], lb[0, 10:])


def test_packed_segments_and_padding_are_independent():
  model, _ = tiny()
  seg = jnp.array([[1] * 6 + [2] * 7 + [0] * 3])
  pos = jnp.array([list(range(6)) + list(range(7)) + [0] * 3])
  a = tokens(1, 16)
  b = a.at[0, 2].set(3).at[0, 14].set(4)  # change segment 1 and the padding
  la, lb = model(a, seg, pos), model(b, seg, pos)
  np.testing.assert_allclose(la[0, 6:13], lb[0, 6:13], atol=1e-6)  # segment 2 unchanged
  # a segment packed at offset 6 equals the same tokens alone at offset 0
  alone = model(a[:, 6:13])
  np.testing.assert_allclose(la[0, 6:13], alone[0], atol=1e-5)


@pytest.mark.parametrize("attention_kind", ["causal", "prefix_lm"])
def test_padding_never_changes_anything(attention_kind):
  model, _ = tiny(attention=attention_kind)
  seg = jnp.array([[1] * 6 + [2] * 5 + [0] * 5])
  pos = jnp.array([list(range(6)) + list(range(5)) + [0] * 5])
  prefix = jnp.array([[1] * 3 + [0] * 3 + [1] * 2 + [0] * 8])
  a = tokens(1, 16)
  b = a.at[0, 11:].set(jnp.array([3, 4, 5, 6, 7]))
  la, lb = model(a, seg, pos, prefix), model(b, seg, pos, prefix)
  np.testing.assert_allclose(la[0, :11], lb[0, :11], atol=1e-6)


def test_prefix_lm_mask():
  model, _ = tiny(attention="prefix_lm")
  prefix = jnp.array([[1] * 5 + [0] * 7])
  a = tokens(1, 12)
  b = a.at[0, 3].set((a[0, 3] + 1) % 97)  # inside the prefix
  la, lb = model(a, prefix=prefix), model(b, prefix=prefix)
  assert not np.allclose(la[0, :3], lb[0, :3])  # earlier prefix positions see it
  c = a.at[0, 8].set((a[0, 8] + 1) % 97)  # after the prefix
  lc = model(c, prefix=prefix)
  np.testing.assert_allclose(la[0, :8], lc[0, :8], atol=1e-6)


def test_training_mask_literal():
  m = attention.training_mask(jnp.array([[1, 1, 1, 2, 2, 0]]), jnp.array([[1, 1, 0, 0, 0, 0]]))
  assert m[0, 0].astype(int).tolist() == [
      [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
      [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]


@pytest.mark.parametrize("attention_kind", ["causal", "prefix_lm"])
def test_kv_cache_decoding_matches_full_forward(attention_kind):
  model, cfg = tiny(attention=attention_kind)
  toks = tokens(2, 12)
  n_prompt = 5
  prefix = jnp.broadcast_to(jnp.arange(12) < n_prompt, (2, 12)).astype(jnp.int32)
  full = model(toks, prefix=prefix)
  cache = init_cache(cfg, 2, 16)
  pos = jnp.broadcast_to(jnp.arange(n_prompt), (2, n_prompt))
  first, cache = model.decode(toks[:, :n_prompt], pos, cache,
                              prefix_len=jnp.full((2,), n_prompt))
  outs = [first]
  for t in range(n_prompt, 12):
    step, cache = model.decode(toks[:, t:t + 1], jnp.full((2, 1), t), cache)
    outs.append(step)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)


def test_kv_cache_decoding_in_chunks_at_different_positions():
  # Chunks of several tokens after a filled cache, rows at different offsets: each chunk
  # reads the cache plus its own keys, causally.
  model, cfg = tiny()
  toks = tokens(2, 12)
  full = model(toks)
  cache = init_cache(cfg, 2, 16)
  outs = []
  for start, stop in ((0, 3), (3, 7), (7, 12)):
    pos = jnp.broadcast_to(jnp.arange(start, stop), (2, stop - start))
    logits, cache = model.decode(toks[:, start:stop], pos, cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  # Row 1 one token behind row 0 (as with prompts of different lengths).
  cache = init_cache(cfg, 2, 16)
  _, cache = model.decode(toks[:, :5], jnp.broadcast_to(jnp.arange(5), (2, 5)), cache)
  pos = jnp.array([[5, 6, 7], [4, 5, 6]])
  logits, _ = model.decode(jnp.stack([toks[0, 5:8], toks[1, 4:7]]), pos, cache)
  np.testing.assert_allclose(logits[0], full[0, 5:8], atol=1e-5)
  np.testing.assert_allclose(logits[1], full[1, 4:7], atol=1e-5)


def test_greedy_generate_matches_argmax_of_full_forward():
  from codegen2_jax import decoding
  model, _ = tiny()
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]
  outs = decoding.generate(model, prompts, max_new_tokens=6, stop_ids=())
  for prompt, out in zip(prompts, outs):
    seq = list(prompt)
    for _ in range(6):
      seq.append(int(model(jnp.array([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt):]


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match="attention"):
    ModelConfig(attention="bidirectional")
  with pytest.raises(ValueError, match="rotary_dim"):
    ModelConfig(head_dim=8, rotary_dim=16)


def test_infill_prompt_format(vocab):
  from codegen2_jax import decoding
  from codegen2_jax.data import vocab as V
  ids = decoding.infill_prompt(vocab, "def f(", "):\n")
  assert vocab.decode_visible(ids) == "<|endoftext|>def f(<mask_1>):\n<|endoftext|><sep><mask_1>"
  assert ids[-3:] == [V.EOS_ID, V.SEP_ID, V.mask_id(1)]


def _loss_and_grads(cfg_kw):
  model, cfg = tiny(**cfg_kw)
  toks = tokens(2, 16, seed=3)
  seg = jnp.array([[1] * 9 + [2] * 7, [1] * 12 + [0] * 4])
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    logits = nnx.merge(graphdef, p)(toks, seg)
    return jax.nn.logsumexp(logits, -1).mean() - logits[..., 7].mean()

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  return value, grads


def test_scan_and_remat_policies_give_identical_results():
  ref_value, ref_grads = _loss_and_grads({})
  for kw in ({"scan_layers": True}, {"remat": "minimal"}, {"remat": "full"},
             {"scan_layers": True, "remat": "full"}):
    value, grads = _loss_and_grads(kw)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6, err_msg=str(kw))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(a, b, atol=1e-6, err_msg=str(kw))


def test_splash_attention_matches_xla_in_interpret_mode():
  rng = np.random.RandomState(0)
  b, length, h, d = 2, 128, 2, 64
  q, k, v = (jnp.asarray(rng.randn(b, length, h, d), jnp.float32) for _ in range(3))
  seg = jnp.asarray(np.array([[1] * 50 + [2] * 60 + [0] * 18, [1] * 128]), jnp.int32)
  want = attention.attend(q, k, v, seg, None, "xla")
  got = attention.attend(q, k, v, seg, None, "splash")
  real = np.asarray(seg > 0)
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=2e-5)


def test_auto_attention_on_cpu_is_xla_and_prefix_refuses_splash():
  assert attention.resolve_implementation("auto", jnp.bfloat16, False, 128) == "xla"
  x = jnp.zeros((1, 8, 1, 8))
  with pytest.raises(ValueError, match="prefix-LM"):
    attention.attend(x, x, x, jnp.ones((1, 8), jnp.int32), jnp.ones((1, 8)), "splash")


def test_paper_size_gin_files_build_the_table():
  import gin
  from codegen2_jax import gin_config
  table = {"1b": (16, 2048, 16, 128, 8192, 1.02e9), "3_7b": (16, 4096, 16, 256, 16384, 3.64e9),
           "7b": (32, 4096, 16, 256, 16384, 6.86e9), "16b": (34, 6144, 24, 256, 24576, 16.0e9)}
  for name, (n, d, h, hd, f, count) in table.items():
    gin_config.parse([f"gin/models/{name}.gin"], [])
    cfg = ModelConfig()
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff) == (n, d, h, hd, f)
    assert (cfg.rotary_dim, cfg.vocab_size, cfg.max_len) == (64, 51200, 2048)
    got = count_params(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))))
    assert abs(got - count) / count < 0.01, (name, got)
  gin.clear_config()


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_xla_on_gpu():
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(2, 256, 4, 64), jnp.bfloat16) for _ in range(3))
  seg = jnp.asarray(np.repeat([1, 2, 3, 0], 64)[None].repeat(2, 0), jnp.int32)
  want = attention.attend(*(x.astype(jnp.float32) for x in (q, k, v)), seg, None, "xla")
  got = attention.attend(q, k, v, seg, None, "cudnn").astype(jnp.float32)
  real = np.asarray(seg > 0)
  assert np.abs(np.asarray(got - want))[real].max() < 0.03
