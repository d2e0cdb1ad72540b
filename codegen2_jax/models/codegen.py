"""The CodeGen architecture (as in Hugging Face `CodeGenForCausalLM`), in Flax NNX.

    h = x + Attn(LN(x)) + MLP(LN(x))      one shared LayerNorm per block (parallel block)
    logits = lm_head(LN_f(h))             untied head with bias, no learned positions

Attention projections have no bias; the MLP (d -> ffn -> d) has biases and gelu (tanh);
rotary embedding on the first `rotary_dim` dims of each head. Parameters are float32;
activations use `ModelConfig.dtype`. Every parameter carries logical axis names
(`out_sharding` metadata) from the fixed vocabulary of `partitioning`.

The same weights serve training (`__call__` on packed rows) and decoding (`decode` with a
KV cache of one [batch, cache_len, heads, head_dim] pair per layer; cache slot s holds
position s).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from codegen2_jax.models import attention as attn
from codegen2_jax.models.rotary import apply_rotary


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and numerics of a CodeGen model (see gin/models/ for the paper's sizes)."""
  vocab_size: int = 51200
  d_model: int = 2048
  n_layers: int = 16
  n_heads: int = 16
  head_dim: int = 128
  rotary_dim: int = 64
  d_ff: int = 8192
  max_len: int = 2048
  dtype: str = "float32"          # compute dtype; parameters stay float32
  attention: str = "causal"       # "causal" or "prefix_lm"
  layer_norm_eps: float = 1e-5
  init_std: float = 0.02

  def __post_init__(self):
    if self.attention not in ("causal", "prefix_lm"):
      raise ValueError(f"ModelConfig.attention={self.attention!r}; use 'causal' or 'prefix_lm'")
    if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
      raise ValueError(f"rotary_dim {self.rotary_dim} must be even and <= head_dim "
                       f"{self.head_dim}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _param(rngs: nnx.Rngs, init, shape, axes: tuple[str, ...]) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes,
                   eager_sharding=False)


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias over the last axis, statistics in float32."""

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs):
    self.scale = _param(rngs, nnx.initializers.ones, (dim,), ("embed",))
    self.bias = _param(rngs, nnx.initializers.zeros, (dim,), ("embed",))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Block(nnx.Module):
  """One parallel CodeGen block with a shared LayerNorm."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, hd, f = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    normal = nnx.initializers.normal(cfg.init_std)
    self.cfg = cfg
    self.ln = LayerNorm(d, cfg.layer_norm_eps, rngs)
    self.q = _param(rngs, normal, (d, h, hd), ("embed", "heads", "kv"))
    self.k = _param(rngs, normal, (d, h, hd), ("embed", "heads", "kv"))
    self.v = _param(rngs, normal, (d, h, hd), ("embed", "heads", "kv"))
    self.out = _param(rngs, normal, (h, hd, d), ("heads", "kv", "embed"))
    self.fc_in = _param(rngs, normal, (d, f), ("embed", "mlp"))
    self.fc_in_bias = _param(rngs, nnx.initializers.zeros, (f,), ("mlp",))
    self.fc_out = _param(rngs, normal, (f, d), ("mlp", "embed"))
    self.fc_out_bias = _param(rngs, nnx.initializers.zeros, (d,), ("embed",))

  def _qkv(self, x, positions):
    dt = self.cfg.compute_dtype
    q = jnp.einsum("bld,dhk->blhk", x, self.q[...].astype(dt))
    k = jnp.einsum("bld,dhk->blhk", x, self.k[...].astype(dt))
    v = jnp.einsum("bld,dhk->blhk", x, self.v[...].astype(dt))
    q = apply_rotary(q, positions, self.cfg.rotary_dim)
    k = apply_rotary(k, positions, self.cfg.rotary_dim)
    return q, k, v

  def _mlp(self, x):
    dt = self.cfg.compute_dtype
    hidden = jnp.einsum("bld,df->blf", x, self.fc_in[...].astype(dt)) + self.fc_in_bias[...].astype(dt)
    hidden = jax.nn.gelu(hidden, approximate=True)
    return jnp.einsum("blf,fd->bld", hidden, self.fc_out[...].astype(dt)) + self.fc_out_bias[...].astype(dt)

  def _out(self, o):
    return jnp.einsum("blhk,hkd->bld", o, self.out[...].astype(self.cfg.compute_dtype))

  def __call__(self, x, positions, mask):
    """x [b, l, d] -> [b, l, d]; mask bool [b, 1, l, l]."""
    y = self.ln(x)
    q, k, v = self._qkv(y, positions)
    return x + self._out(attn.dot_product_attention(q, k, v, mask)) + self._mlp(y)

  def decode(self, x, positions, mask, cache_k, cache_v):
    """Writes this call's keys/values into the cache at slots `positions` and attends.

    x [b, t, d]; positions [b, t] (consecutive per row); cache_* [b, s, h, hd].
    Returns (y [b, t, d], cache_k, cache_v).
    """
    y = self.ln(x)
    q, k, v = self._qkv(y, positions)
    write = jax.vmap(lambda c, new, start: jax.lax.dynamic_update_slice(c, new, (start, 0, 0)))
    cache_k = write(cache_k, k.astype(cache_k.dtype), positions[:, 0])
    cache_v = write(cache_v, v.astype(cache_v.dtype), positions[:, 0])
    o = attn.dot_product_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask)
    return x + self._out(o) + self._mlp(y), cache_k, cache_v


class CodeGen(nnx.Module):
  """CodeGen decoder: token embedding, n parallel blocks, final LayerNorm, lm_head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    normal = nnx.initializers.normal(cfg.init_std)
    self.cfg = cfg
    self.embed = _param(rngs, normal, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"))
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.ln_f = LayerNorm(cfg.d_model, cfg.layer_norm_eps, rngs)
    self.lm_head = _param(rngs, normal, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
    self.lm_head_bias = _param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), ("vocab",))

  def _embed(self, tokens):
    return jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.compute_dtype)

  def _logits(self, x):
    x = self.ln_f(x)
    logits = jnp.einsum("bld,dv->blv", x, self.lm_head[...].astype(x.dtype))
    return logits.astype(jnp.float32) + self.lm_head_bias[...]

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, prefix: jax.Array | None = None
               ) -> jax.Array:
    """tokens [b, l] int -> logits float32 [b, l, vocab].

    segment_ids [b, l] (0 = padding; default: one segment, no padding), positions [b, l]
    (default 0..l-1), prefix [b, l] (1 = bidirectional; used when attention='prefix_lm').
    """
    b, length = tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, length), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    use_prefix = prefix if self.cfg.attention == "prefix_lm" else None
    mask = attn.training_mask(segment_ids, use_prefix)
    x = self._embed(tokens)
    for block in self.blocks:
      x = block(x, positions, mask)
    return self._logits(x)

  def decode(self, tokens: jax.Array, positions: jax.Array, cache: list[tuple[Any, Any]],
             prefix_len: jax.Array | None = None):
    """Incremental forward pass with a KV cache.

    tokens, positions [b, t]; cache from `init_cache`; prefix_len [b] for prefix-LM
    prefill. Returns (logits float32 [b, t, vocab], new cache).
    """
    cache_len = cache[0][0].shape[1]
    use_prefix = prefix_len if self.cfg.attention == "prefix_lm" else None
    mask = attn.decode_mask(positions, cache_len, use_prefix)
    x = self._embed(tokens)
    new_cache = []
    for block, (ck, cv) in zip(self.blocks, cache):
      x, ck, cv = block.decode(x, positions, mask, ck, cv)
      new_cache.append((ck, cv))
    return self._logits(x), new_cache


def init_cache(cfg: ModelConfig, batch: int, cache_len: int) -> list[tuple[jax.Array, jax.Array]]:
  """Empty KV cache: per layer a (keys, values) pair of [batch, cache_len, heads, head_dim]."""
  shape = (batch, cache_len, cfg.n_heads, cfg.head_dim)
  return [(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
          for _ in range(cfg.n_layers)]


def count_params(model: nnx.Module) -> int:
  """Number of parameters of a model (or of an abstract one from nnx.eval_shape)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
