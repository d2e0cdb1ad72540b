"""Sampler: top-k / top-p, batches of different lengths, chunked stop checks, stop strings,
seeding, and one compilation per shape bucket."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codegen2_jax import decoding
from codegen2_jax.models.codegen import CodeGen, ModelConfig


def tiny(vocab_size=97, max_len=128):
  cfg = ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, head_dim=8,
                    rotary_dim=4, d_ff=64, max_len=max_len)
  return CodeGen(cfg, nnx.Rngs(0))


def _draws(logits, n=400, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  f = jax.jit(jax.vmap(lambda k: decoding.sample_logits(logits, k, **kw)[0]))
  return np.asarray(f(keys))


def test_top_p_and_top_k_restrict_the_draw():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  assert set(_draws(logits, temperature=1.0).tolist()) == {0, 1, 2, 3}
  # nucleus 0.7: 0.5 alone is below 0.7, so tokens 0 and 1 (mass 0.8) stay.
  assert set(_draws(logits, temperature=1.0, top_p=0.7).tolist()) == {0, 1}
  assert set(_draws(logits, temperature=1.0, top_p=0.45).tolist()) == {0}
  assert set(_draws(logits, temperature=1.0, top_k=3).tolist()) == {0, 1, 2}
  assert set(_draws(logits, temperature=0.0).tolist()) == {0}
  # frequencies follow the renormalised probabilities (0.5/0.8, 0.3/0.8)
  d = _draws(logits, n=4000, temperature=1.0, top_p=0.7)
  assert abs((d == 0).mean() - 0.625) < 0.04


def test_batch_of_different_lengths_equals_one_by_one():
  model = tiny()
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24],
             [30]]
  together = decoding.generate(model, prompts, max_new_tokens=7, stop_ids=())
  for prompt, out in zip(prompts, together):
    assert decoding.generate(model, [prompt], max_new_tokens=7, stop_ids=())[0] == out
  # chunked generation (as with stop strings) gives the same greedy tokens
  chunked = decoding.generate(model, prompts, max_new_tokens=7, stop_ids=(),
                              stop_fn=lambda i, ids: False, stop_check_every=3)
  assert chunked == together


def test_sampling_is_seeded():
  model = tiny()
  kw = dict(max_new_tokens=12, stop_ids=(), temperature=1.0, top_p=0.9)
  a = decoding.generate(model, [[5, 6]] * 4, seed=1, **kw)
  assert a == decoding.generate(model, [[5, 6]] * 4, seed=1, **kw)
  assert a != decoding.generate(model, [[5, 6]] * 4, seed=2, **kw)
  assert len({tuple(x) for x in a}) > 1  # rows of one batch draw independently


def test_stop_ids_and_stop_fn_end_rows():
  model = tiny()
  free = decoding.generate(model, [[5, 6, 7]], max_new_tokens=10, stop_ids=())[0]
  stopped = decoding.generate(model, [[5, 6, 7]], max_new_tokens=10, stop_ids=(free[3],))[0]
  assert stopped == free[:free.index(free[3]) + 1]
  calls = []

  def stop_fn(row, ids):
    calls.append(len(ids))
    return len(ids) >= 4

  got = decoding.generate(model, [[5, 6, 7]], max_new_tokens=10, stop_ids=(),
                          stop_fn=stop_fn, stop_check_every=4)[0]
  assert calls == [4] and got == free[:4]


def test_compiled_once_per_bucket():
  model = tiny()
  decoding.generate(model, [[5, 6, 7]], max_new_tokens=5, stop_ids=())
  before = (decoding._prefill._cache_size(), decoding._extend._cache_size())
  decoding.generate(model, [[9, 8, 7, 6, 5, 4, 3]], max_new_tokens=5, stop_ids=())
  decoding.generate(model, [[11] * 12], max_new_tokens=5, stop_ids=(), seed=3)
  assert (decoding._prefill._cache_size(), decoding._extend._cache_size()) == before


def test_stop_strings_cut_the_text(vocab):
  model = tiny(vocab_size=vocab.vocab_size)
  prompt = [decoding.completion_prompt(vocab, "def f(x):\n")]
  full = decoding.sample_texts(model, vocab, prompt, max_new_tokens=40, stop_ids=())[0]
  assert len(full) > 20
  stop = full[10:13]
  cut = decoding.sample_texts(model, vocab, prompt, max_new_tokens=40, stop_ids=(),
                              stop_strings=[stop, "\x00never"], stop_check_every=8)[0]
  assert cut == full[:full.index(stop)]
  assert decoding.truncate("a\ndef b\nclass", ["\nclass", "\ndef"]) == "a"


def test_bad_settings_are_refused():
  model = tiny(max_len=32)
  with pytest.raises(ValueError, match="top_p"):
    decoding.generate(model, [[5]], top_p=0.0)
  with pytest.raises(ValueError, match="max_len"):
    decoding.generate(model, [[5] * 20], max_new_tokens=20)
  with pytest.raises(ValueError, match="at least one token"):
    decoding.generate(model, [[]])
