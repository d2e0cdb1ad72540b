"""The CodeGen architecture (as in Hugging Face `CodeGenForCausalLM`), in Flax NNX.

    h = x + Attn(LN(x)) + MLP(LN(x))      one shared LayerNorm per block (parallel block)
    logits = lm_head(LN_f(h))             untied head with bias, no learned positions

Attention projections have no bias; the MLP (d -> ffn -> d) has biases and gelu (tanh);
rotary embedding on the first `rotary_dim` dims of each head. Parameters are float32;
activations use `ModelConfig.dtype`. Every parameter carries logical axis names
(`out_sharding` metadata) from the fixed vocabulary of `partitioning`.

The layers' parameters are stacked on a leading `layers` axis whatever the settings, so a
checkpoint restores under any of them: `scan_layers=True` runs them with `lax.scan`
(one compiled layer; the choice for big models), False with a Python loop (faster on CPU).
`remat` picks what the backward pass recomputes: 'none', 'minimal' (save matmul outputs)
or 'full' (save only each layer's input).

The same weights serve training (`__call__` on packed rows) and decoding (`decode` with a
KV cache of stacked [layers, batch, heads, cache_len, head_dim] keys and values; cache
slot s holds position s).
"""

from __future__ import annotations

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp
from flax import nnx

from codegen2_jax import partitioning
from codegen2_jax.models import attention as attn
from codegen2_jax.models.rotary import apply_rotary

REMAT_POLICIES = {
    "none": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


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
  attention_impl: str = "auto"    # see models.attention.IMPLEMENTATIONS
  scan_layers: bool = False
  remat: str = "none"             # "none", "minimal" or "full"
  layer_norm_eps: float = 1e-5
  init_std: float = 0.02

  def __post_init__(self):
    if self.attention not in ("causal", "prefix_lm"):
      raise ValueError(f"ModelConfig.attention={self.attention!r}; use 'causal' or 'prefix_lm'")
    if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
      raise ValueError(f"rotary_dim {self.rotary_dim} must be even and <= head_dim "
                       f"{self.head_dim}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r}; use one of {list(REMAT_POLICIES)}")
    if self.attention_impl not in attn.IMPLEMENTATIONS:
      raise ValueError(f"ModelConfig.attention_impl={self.attention_impl!r}; use one of "
                       f"{list(attn.IMPLEMENTATIONS)}")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _param(rngs: nnx.Rngs, init, shape, axes: tuple[str, ...]) -> nnx.Param:
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes,
                   eager_sharding=False)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis with statistics in float32; returns x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


class Blocks(nnx.Module):
  """The parameters of all n_layers parallel blocks, stacked on a leading 'layers' axis."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    n, d, h, hd, f = cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff
    normal = nnx.initializers.normal(cfg.init_std)
    ones, zeros = nnx.initializers.ones, nnx.initializers.zeros
    self.ln_scale = _param(rngs, ones, (n, d), ("layers", "embed"))
    self.ln_bias = _param(rngs, zeros, (n, d), ("layers", "embed"))
    self.q = _param(rngs, normal, (n, d, h, hd), ("layers", "embed", "heads", "kv"))
    self.k = _param(rngs, normal, (n, d, h, hd), ("layers", "embed", "heads", "kv"))
    self.v = _param(rngs, normal, (n, d, h, hd), ("layers", "embed", "heads", "kv"))
    self.out = _param(rngs, normal, (n, h, hd, d), ("layers", "heads", "kv", "embed"))
    self.fc_in = _param(rngs, normal, (n, d, f), ("layers", "embed", "mlp"))
    self.fc_in_bias = _param(rngs, zeros, (n, f), ("layers", "mlp"))
    self.fc_out = _param(rngs, normal, (n, f, d), ("layers", "mlp", "embed"))
    self.fc_out_bias = _param(rngs, zeros, (n, d), ("layers", "embed"))

  def arrays(self) -> dict[str, jax.Array]:
    """The stacked parameter arrays by name."""
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, nnx.Param)}


def _qkv(p, y, positions, cfg: ModelConfig):
  dt = cfg.compute_dtype
  q, k, v = (jnp.einsum("bld,dhk->blhk", y, p[n].astype(dt)) for n in ("q", "k", "v"))
  q = apply_rotary(q, positions, cfg.rotary_dim)
  k = apply_rotary(k, positions, cfg.rotary_dim)
  c = ("batch", "length", "heads", "kv")
  return (partitioning.constrain(q, c), partitioning.constrain(k, c),
          partitioning.constrain(v, c))


def _mlp_and_out(p, y, o, cfg: ModelConfig):
  dt = cfg.compute_dtype
  hidden = jnp.einsum("bld,df->blf", y, p["fc_in"].astype(dt)) + p["fc_in_bias"].astype(dt)
  hidden = partitioning.constrain(jax.nn.gelu(hidden, approximate=True),
                                  ("batch", "length", "mlp"))
  mlp = jnp.einsum("blf,fd->bld", hidden, p["fc_out"].astype(dt)) + p["fc_out_bias"].astype(dt)
  return jnp.einsum("blhk,hkd->bld", o, p["out"].astype(dt)) + mlp


def block(p: dict, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
          prefix: jax.Array | None, cfg: ModelConfig) -> jax.Array:
  """One layer on a full sequence: x [b, l, d] -> [b, l, d]; p holds one layer's arrays."""
  y = layer_norm(x, p["ln_scale"], p["ln_bias"], cfg.layer_norm_eps)
  q, k, v = _qkv(p, y, positions, cfg)
  o = attn.attend(q, k, v, segment_ids, prefix, cfg.attention_impl)
  out = x + _mlp_and_out(p, y, o, cfg)
  return partitioning.constrain(out, ("batch", "length", "embed"))


def block_decode(p: dict, x, positions, cache_k, cache_v, prefix_len, cfg: ModelConfig):
  """One layer with a read-only KV cache.

  x [b, t, d]; positions [b, t] (consecutive per row); cache_* [b, h, s, hd], this
  layer's keys/values of the positions before positions[:, 0]. Returns (y [b, t, d], k, v)
  with this call's keys/values k, v [b, t, h, hd], for the caller to write to the cache.
  """
  y = layer_norm(x, p["ln_scale"], p["ln_bias"], cfg.layer_norm_eps)
  q, k, v = _qkv(p, y, positions, cfg)
  k, v = k.astype(cache_k.dtype), v.astype(cache_v.dtype)  # as the cache will hold them
  o = attn.cached_attention(q, k.astype(q.dtype), v.astype(q.dtype), cache_k.astype(q.dtype),
                            cache_v.astype(q.dtype), positions, prefix_len)
  return x + _mlp_and_out(p, y, o, cfg), k, v


class CodeGen(nnx.Module):
  """CodeGen decoder: token embedding, n parallel blocks, final LayerNorm, lm_head."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    normal = nnx.initializers.normal(cfg.init_std)
    self.cfg = cfg
    self.embed = _param(rngs, normal, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"))
    self.blocks = Blocks(cfg, rngs)
    self.ln_f_scale = _param(rngs, nnx.initializers.ones, (cfg.d_model,), ("embed",))
    self.ln_f_bias = _param(rngs, nnx.initializers.zeros, (cfg.d_model,), ("embed",))
    self.lm_head = _param(rngs, normal, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"))
    self.lm_head_bias = _param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), ("vocab",))

  def _embed(self, tokens):
    x = jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.compute_dtype)
    return partitioning.constrain(x, ("batch", "length", "embed"))

  def _logits(self, x):
    x = layer_norm(x, self.ln_f_scale[...], self.ln_f_bias[...], self.cfg.layer_norm_eps)
    logits = jnp.einsum("bld,dv->blv", x, self.lm_head[...].astype(x.dtype))
    logits = logits.astype(jnp.float32) + self.lm_head_bias[...]
    return partitioning.constrain(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, prefix: jax.Array | None = None
               ) -> jax.Array:
    """tokens [b, l] int -> logits float32 [b, l, vocab].

    segment_ids [b, l] (0 = padding; default: one segment, no padding), positions [b, l]
    (default 0..l-1), prefix [b, l] (1 = bidirectional; used when attention='prefix_lm').
    """
    cfg = self.cfg
    b, length = tokens.shape
    if segment_ids is None:
      segment_ids = jnp.ones((b, length), jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    use_prefix = prefix if cfg.attention == "prefix_lm" else None
    layer = functools.partial(block, positions=positions, segment_ids=segment_ids,
                              prefix=use_prefix, cfg=cfg)
    if cfg.remat != "none":
      layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat])
    params = self.blocks.arrays()
    x = self._embed(tokens)
    if cfg.scan_layers:
      x, _ = jax.lax.scan(lambda h, p: (layer(p, h), None), x, params)
    else:
      for i in range(cfg.n_layers):
        x = layer(jax.tree.map(lambda a: a[i], params), x)
    return self._logits(x)

  def decode(self, tokens: jax.Array, positions: jax.Array, cache: tuple[jax.Array, jax.Array],
             prefix_len: jax.Array | None = None):
    """Incremental forward pass with a KV cache.

    tokens, positions [b, t] (consecutive per row); cache from `init_cache`; prefix_len
    [b] for prefix-LM prefill. Returns (logits float32 [b, t, vocab], new cache).
    """
    cfg = self.cfg
    cache_k, cache_v = cache
    use_prefix = prefix_len if cfg.attention == "prefix_lm" else None
    layer = functools.partial(block_decode, positions=positions, prefix_len=use_prefix, cfg=cfg)
    x = self._embed(tokens)

    # The cache goes in as read-only scan input and only the new keys/values come out:
    # carrying it through the scan (or writing it per layer) copies the whole cache.
    def step(h, inputs):
      p, ck, cv = inputs
      h, k, v = layer(p, h, cache_k=ck, cache_v=cv)
      return h, (k, v)

    x, (new_k, new_v) = jax.lax.scan(step, x, (self.blocks.arrays(), cache_k, cache_v))
    # One scatter writes every layer's new keys/values [layers, b, t, h, hd] at their slots
    # (in place when the cache is donated or a loop carry).
    b = tokens.shape[0]
    idx = (slice(None), jnp.arange(b)[:, None, None], jnp.arange(cfg.n_heads)[None, :, None],
           positions[:, None, :])
    cache_k = cache_k.at[idx].set(new_k.transpose(0, 1, 3, 2, 4))
    cache_v = cache_v.at[idx].set(new_v.transpose(0, 1, 3, 2, 4))
    return self._logits(x), (cache_k, cache_v)


def init_cache(cfg: ModelConfig, batch: int, cache_len: int) -> tuple[jax.Array, jax.Array]:
  """Empty KV cache: (keys, values), each [layers, batch, heads, cache_len, head_dim]."""
  shape = (cfg.n_layers, batch, cfg.n_heads, cache_len, cfg.head_dim)
  return jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype)


def count_params(model: nnx.Module) -> int:
  """Number of parameters of a model (or of an abstract one from nnx.eval_shape)."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
