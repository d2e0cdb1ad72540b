"""Sampling with a KV cache: greedy, temperature, top-k, top-p; a batch of prompts of
different lengths; stop ids (on device) and stop strings (checked on the host).

Generation is two jit-compiled functions: a prefill of the prompts (right-padded to a
power-of-two bucket, so different prompt lengths share one compilation) and an `extend`
that runs a while-loop of single-token steps for a chunk of tokens. Without stop strings
one chunk covers all `max_new_tokens`; with them, chunks of `stop_check_every` tokens let
the host decode the new text and stop the rows that produced a stop string. Each is
compiled once per (batch, bucket, chunk) shape and sampling settings, not per prompt.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from codegen2_jax.data import vocab as V
from codegen2_jax.models.codegen import init_cache


def _bucket(n: int, minimum: int = 16) -> int:
  return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Next tokens [b] from logits [b, vocab]: argmax at temperature 0, else a draw from the
  softmax at `temperature` restricted to the `top_k` most likely tokens (0: all) and to
  the smallest set whose probability reaches `top_p` (nucleus; 1.0: all)."""
  if temperature == 0.0:
    return logits.argmax(-1).astype(jnp.int32)
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(order, axis=-1)
    # Keep a token when the mass strictly before it is below top_p (the first always).
    before = jnp.cumsum(probs, axis=-1) - probs
    kept = jnp.where(before < top_p, order, jnp.inf).min(-1, keepdims=True)
    logits = jnp.where(logits < kept, -jnp.inf, logits)
  return jax.random.categorical(key, logits).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill(graphdef, params, tokens, lengths, *, cache_len: int):
  model = nnx.merge(graphdef, params)
  b, p = tokens.shape
  cache = init_cache(model.cfg, b, cache_len)
  positions = jnp.broadcast_to(jnp.arange(p), (b, p))
  logits, cache = model.decode(tokens, positions, cache, prefix_len=lengths)
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
  return cache, last


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "temperature", "top_k",
                                             "top_p"), donate_argnames=("cache",))
def _extend(graphdef, params, cache, logits, done, lengths, start, stop_ids, rng, *,
            steps: int, temperature: float, top_k: int, top_p: float):
  """`steps` more tokens per row (PAD once a row is done); positions lengths+start+t."""
  model = nnx.merge(graphdef, params)
  b = logits.shape[0]

  def cond(carry):
    t, _, _, _, done, _ = carry
    return (t < steps) & ~done.all()

  def body(carry):
    t, out, cache, logits, done, rng = carry
    rng, key = jax.random.split(rng)
    tok = jnp.where(done, V.PAD_ID, sample_logits(logits, key, temperature, top_k, top_p))
    out = out.at[:, t].set(tok)
    done = done | jnp.isin(tok, stop_ids)
    pos = (lengths + start + t)[:, None]
    logits, cache = model.decode(tok[:, None], pos, cache)
    return t + 1, out, cache, logits[:, 0], done, rng

  out = jnp.full((b, steps), V.PAD_ID, jnp.int32)
  _, out, cache, logits, done, rng = jax.lax.while_loop(
      cond, body, (0, out, cache, logits, done, rng))
  return out, cache, logits, done, rng


def generate(model: nnx.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
             stop_ids: Sequence[int] = (V.EOS_ID,),
             stop_fn: Callable[[int, list[int]], bool] | None = None,
             stop_check_every: int = 32) -> list[list[int]]:
  """Continues each prompt (a list of ids); returns the new ids of each, up to and
  including the first stop id, at most `max_new_tokens`.

  `stop_fn(row, new_ids)`, if given, is called on the host every `stop_check_every`
  tokens for each unfinished row; True ends that row (its ids are returned as they are,
  for the caller to cut, e.g. at a stop string).
  """
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  if not 0.0 < top_p <= 1.0 or temperature < 0 or top_k < 0:
    raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1 (got "
                     f"{temperature}, {top_k}, {top_p})")
  graphdef, params = nnx.split(model)
  chunk = min(stop_check_every, max_new_tokens) if stop_fn else max_new_tokens
  padded_new = -(-max_new_tokens // chunk) * chunk
  longest = max(len(p) for p in prompts)
  if longest + padded_new > model.cfg.max_len:
    raise ValueError(f"prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the "
                     f"model's max_len {model.cfg.max_len}")
  p = min(_bucket(longest), model.cfg.max_len - padded_new)
  tokens = np.zeros((len(prompts), p), np.int32)
  for i, prompt in enumerate(prompts):
    tokens[i, :len(prompt)] = prompt
  lengths = jnp.asarray([len(x) for x in prompts], jnp.int32)
  cache, logits = _prefill(graphdef, params, tokens, lengths, cache_len=p + padded_new)
  stops = jnp.asarray(stop_ids, jnp.int32)
  rng = jax.random.key(seed)
  done = np.zeros(len(prompts), bool)
  results: list[list[int]] = [[] for _ in prompts]
  finished = [False] * len(prompts)
  stop_set = set(stop_ids)
  for start in range(0, max_new_tokens, chunk):
    out, cache, logits, done_dev, rng = _extend(
        graphdef, params, cache, logits, jnp.asarray(done), lengths, start, stops, rng,
        steps=chunk, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
    out = np.asarray(out)
    for i, row in enumerate(out):
      if finished[i]:
        continue
      for t in row.tolist():
        if len(results[i]) == max_new_tokens:
          break
        results[i].append(t)
        if t in stop_set:
          finished[i] = True
          break
      if len(results[i]) == max_new_tokens:
        finished[i] = True
      if not finished[i] and stop_fn is not None and stop_fn(i, results[i]):
        finished[i] = True
    done = np.asarray(finished)
    if done.all():
      break
  return results


# ----------------------------------------------------------------------------------------
# Prompts and text-level helpers


def _lead(vocab) -> list[int]:
  """[<|endoftext|>] (documents follow an EOS in our training), or [] for a vocabulary
  whose run says prompts start bare (`prepend_eos`: converted Hugging Face checkpoints)."""
  return [V.special_ids(vocab).eos] if getattr(vocab, "prepend_eos", True) else []


def completion_prompt(vocab, text: str) -> list[int]:
  """Left-to-right prompt: <|endoftext|> then the text (see _lead)."""
  return _lead(vocab) + list(vocab.encode(text))


def infill_prompt(vocab, prefix: str, suffix: str) -> list[int]:
  """CodeGen2 infill prompt: `prefix <mask_1> suffix <|endoftext|> <sep> <mask_1>`, after
  a leading <|endoftext|> (see _lead)."""
  ids = V.special_ids(vocab)
  m1 = ids.mask(1)
  return (_lead(vocab) + list(vocab.encode(prefix)) + [m1] + list(vocab.encode(suffix))
          + [ids.eos, ids.sep, m1])


def truncate(text: str, stop_strings: Sequence[str]) -> str:
  """`text` up to (not including) the earliest of `stop_strings`."""
  cut = min((i for i in (text.find(s) for s in stop_strings if s) if i >= 0),
            default=len(text))
  return text[:cut]


def sample_texts(model, vocab, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64,
                 stop_ids: Sequence[int] | None = None, stop_strings: Sequence[str] = (),
                 **kw) -> list[str]:
  """Generated text of each prompt (ids): decoded without special stop tokens and cut
  before the first stop string. Rows stop early once a stop string appears."""
  ids = V.special_ids(vocab)
  stop_ids = (ids.eos,) if stop_ids is None else tuple(stop_ids)

  def text_of(new_ids):
    return vocab.decode([i for i in new_ids if i not in stop_ids])

  stop_fn = None
  if stop_strings:
    stop_fn = lambda row, new_ids: any(s in text_of(new_ids) for s in stop_strings)  # noqa: E731
  outs = generate(model, prompts, max_new_tokens, stop_ids=stop_ids, stop_fn=stop_fn, **kw)
  return [truncate(text_of(o), stop_strings) for o in outs]


def complete(model, vocab, prompt: str, max_new_tokens: int = 64,
             stop_strings: Sequence[str] = (), **kw) -> str:
  """Left-to-right completion of `prompt`, cut at <|endoftext|> or a stop string."""
  return sample_texts(model, vocab, [completion_prompt(vocab, prompt)], max_new_tokens,
                      stop_strings=stop_strings, **kw)[0]


def infill(model, vocab, prefix: str, suffix: str, max_new_tokens: int = 64, **kw) -> str:
  """The middle between `prefix` and `suffix`, generated until <eom> (CodeGen2 format)."""
  ids = V.special_ids(vocab)
  return sample_texts(model, vocab, [infill_prompt(vocab, prefix, suffix)], max_new_tokens,
                      stop_ids=(ids.eom, ids.eos), **kw)[0]
