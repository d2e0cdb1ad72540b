"""Rotary position embedding, GPT-J style ("rotate every two"), on the first rotary_dim dims."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rotary(x: jax.Array, positions: jax.Array, rotary_dim: int,
                 base: float = 10000.0) -> jax.Array:
  """x [b, l, h, d], positions [b, l] -> x with dims [:rotary_dim] rotated.

  Pairs are interleaved: (x0, x1), (x2, x3), ... as in GPT-J and Hugging Face CodeGen.
  """
  rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
  inv_freq = 1.0 / (base ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, l, rot/2]
  sin = jnp.repeat(jnp.sin(angles), 2, axis=-1)[:, :, None, :]
  cos = jnp.repeat(jnp.cos(angles), 2, axis=-1)[:, :, None, :]
  pairs = rot.astype(jnp.float32).reshape(rot.shape[:-1] + (rotary_dim // 2, 2))
  rotated = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(rot.shape)
  out = rot.astype(jnp.float32) * cos + rotated * sin
  return jnp.concatenate([out.astype(x.dtype), rest], axis=-1)
