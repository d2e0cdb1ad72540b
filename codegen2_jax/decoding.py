"""Sampling with a KV cache: greedy or temperature / top-k, a batch of prompts, stop ids.

The whole generation (prefill plus a while-loop of single-token steps) is one jit-compiled
function per (batch, prompt bucket, max_new_tokens) shape; prompts are right-padded to a
bucket (a power of two), so different prompt lengths reuse one compilation.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codegen2_jax.data import vocab as V
from codegen2_jax.models.codegen import init_cache


def _bucket(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature",
                                             "top_k"))
def _generate(graphdef, params, tokens, lengths, stop_ids, rng, *, max_new_tokens: int,
              temperature: float, top_k: int):
  model = nnx.merge(graphdef, params)
  b, p = tokens.shape
  cache = init_cache(model.cfg, b, p + max_new_tokens)
  positions = jnp.broadcast_to(jnp.arange(p), (b, p))
  logits, cache = model.decode(tokens, positions, cache, prefix_len=lengths)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]

  def pick(logits, key):
    if temperature == 0.0:
      return logits.argmax(-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k:
      kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)

  def cond(carry):
    t, _, _, _, done, _ = carry
    return (t < max_new_tokens) & ~done.all()

  def body(carry):
    t, out, cache, logits, done, rng = carry
    rng, key = jax.random.split(rng)
    tok = jnp.where(done, V.PAD_ID, pick(logits, key))
    out = out.at[:, t].set(tok)
    done = done | jnp.isin(tok, stop_ids)
    pos = (lengths + t)[:, None]
    logits, cache = model.decode(tok[:, None], pos, cache)
    return t + 1, out, cache, logits[:, 0], done, rng

  out = jnp.full((b, max_new_tokens), V.PAD_ID, jnp.int32)
  done = jnp.zeros((b,), bool)
  _, out, _, _, _, _ = jax.lax.while_loop(cond, body, (0, out, cache, last, done, rng))
  return out


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             stop_ids: Sequence[int] = (V.EOS_ID,)) -> list[list[int]]:
  """Continues each prompt (a list of ids); returns the new ids of each, up to and
  including the first stop id, at most `max_new_tokens`."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  graphdef, params = nnx.split(model)
  longest = max(len(p) for p in prompts)
  if longest + max_new_tokens > model.cfg.max_len:
    raise ValueError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the "
                     f"model's max_len {model.cfg.max_len}")
  p = min(_bucket(longest), model.cfg.max_len - max_new_tokens)
  tokens = np.zeros((len(prompts), p), np.int32)
  for i, prompt in enumerate(prompts):
    tokens[i, :len(prompt)] = prompt
  lengths = np.array([len(x) for x in prompts], np.int32)
  out = np.asarray(_generate(graphdef, params, tokens, lengths, jnp.asarray(stop_ids, jnp.int32),
                             jax.random.key(seed), max_new_tokens=max_new_tokens,
                             temperature=float(temperature), top_k=int(top_k)))
  results = []
  for row in out:
    ids = []
    for t in row.tolist():
      ids.append(t)
      if t in stop_ids:
        break
    results.append(ids)
  return results


def completion_prompt(vocab, text: str) -> list[int]:
  """Left-to-right prompt: <|endoftext|> then the text (documents follow an EOS in training)."""
  return [V.special_ids(vocab).eos] + list(vocab.encode(text))


def infill_prompt(vocab, prefix: str, suffix: str) -> list[int]:
  """CodeGen2 infill prompt: `prefix <mask_1> suffix <|endoftext|> <sep> <mask_1>`."""
  ids = V.special_ids(vocab)
  m1 = ids.mask(1)
  return ([ids.eos] + list(vocab.encode(prefix)) + [m1] + list(vocab.encode(suffix))
          + [ids.eos, ids.sep, m1])


def complete(model, vocab, prompt: str, max_new_tokens: int = 64, **kw) -> str:
  """Left-to-right completion of `prompt`, cut at <|endoftext|>."""
  ids = V.special_ids(vocab)
  out = generate(model, [completion_prompt(vocab, prompt)], max_new_tokens,
                 stop_ids=(ids.eos,), **kw)[0]
  return vocab.decode([i for i in out if i != ids.eos])


def infill(model, vocab, prefix: str, suffix: str, max_new_tokens: int = 64, **kw) -> str:
  """The middle between `prefix` and `suffix`, generated until <eom> (CodeGen2 format)."""
  ids = V.special_ids(vocab)
  out = generate(model, [infill_prompt(vocab, prefix, suffix)], max_new_tokens,
                 stop_ids=(ids.eom, ids.eos), **kw)[0]
  return vocab.decode([i for i in out if i not in (ids.eom, ids.eos)])
