"""Attention masks and the XLA attention kernel.

Masks are boolean [batch, 1, q_len, k_len], True where a query may read a key.
Training (packed rows):

    allowed[q, k] = same_segment(q, k) and segment(k) != 0 and
                    (k <= q  or  (prefix[q] and prefix[k]))

so attention never crosses a packed segment, never reads padding, is causal, and is
bidirectional inside each example's prefix (prefix-LM). Example, segment_ids [1 1 1 2 2 0],
prefix [1 1 0 0 0 0] (row = query):

    1 1 0 0 0 0
    1 1 0 0 0 0
    1 1 1 0 0 0
    0 0 0 1 0 0
    0 0 0 1 1 0
    0 0 0 0 0 0     (padding reads nothing; its output is weighted out of the loss)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def training_mask(segment_ids: jax.Array, prefix: jax.Array | None = None) -> jax.Array:
  """[batch, length] segment ids (0 = padding) and prefix flags -> bool [b, 1, l, l]."""
  length = segment_ids.shape[1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
  allowed = causal[None]
  if prefix is not None:
    p = prefix.astype(bool)
    allowed = allowed | (p[:, :, None] & p[:, None, :])
  return (allowed & same)[:, None]


def decode_mask(query_positions: jax.Array, cache_len: int,
                prefix_len: jax.Array | None = None) -> jax.Array:
  """Mask for queries at `query_positions` [b, q] over cache slots 0..cache_len-1.

  Slot s holds position s. A query at position p reads slots s <= p, and, when
  `prefix_len` [b] is given, every slot of the prefix if p is inside the prefix.
  """
  slots = jnp.arange(cache_len)[None, None, :]
  pos = query_positions[:, :, None]
  allowed = slots <= pos
  if prefix_len is not None:
    inside = slots < prefix_len[:, None, None]
    allowed = allowed | (inside & (pos < prefix_len[:, None, None]))
  return allowed[:, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array
                          ) -> jax.Array:
  """q [b, lq, h, d], k/v [b, lk, h, d], mask bool [b, 1, lq, lk] -> [b, lq, h, d].

  Scores and softmax in float32. Fully masked rows (padding) give finite garbage, not NaN.
  """
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)
