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
    0 0 0 0 0 1     (padding reads only itself, so no row is empty and no kernel
                     yields NaN; its output is weighted out of the loss)

Implementations (`ModelConfig.attention_impl`), all computing the mask above:

    xla     einsum + float32 softmax; runs everywhere (the reference)
    cudnn   jax.nn.dot_product_attention(implementation='cudnn'): cuDNN fused attention
            on NVIDIA GPUs (bfloat16/float16), the mask passed as a boolean array
    splash  Pallas splash attention on TPU: causal block-sparse mask plus segment ids,
            no mask materialised; the prefix-LM mask is not a static mask, so prefix-LM
            models use xla. Off TPU it runs in Pallas interpret mode (for tests).
    auto    splash on TPU (causal), cudnn on GPU (16-bit dtypes), else xla
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from codegen2_jax import partitioning


def training_mask(segment_ids: jax.Array, prefix: jax.Array | None = None) -> jax.Array:
  """[batch, length] segment ids (0 = padding) and prefix flags -> bool [b, 1, l, l]."""
  length = segment_ids.shape[1]
  causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
  allowed = causal[None]
  if prefix is not None:
    p = prefix.astype(bool)
    allowed = allowed | (p[:, :, None] & p[:, None, :])
  padding_self = (segment_ids == 0)[:, :, None] & jnp.eye(length, dtype=bool)[None]
  return ((allowed & same) | padding_self)[:, None]


def decode_mask(query_positions: jax.Array, key_positions: jax.Array,
                prefix_len: jax.Array | None = None) -> jax.Array:
  """Mask for queries at `query_positions` [b, q] over keys at `key_positions` [b, k].

  A query at position p reads keys at positions <= p, and, when `prefix_len` [b] is
  given, every key of the prefix if p is inside the prefix.
  """
  keys = key_positions[:, None, :]
  pos = query_positions[:, :, None]
  allowed = keys <= pos
  if prefix_len is not None:
    inside = keys < prefix_len[:, None, None]
    allowed = allowed | (inside & (pos < prefix_len[:, None, None]))
  return allowed[:, None]


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, cache_k: jax.Array,
                     cache_v: jax.Array, positions: jax.Array,
                     prefix_len: jax.Array | None = None) -> jax.Array:
  """Attention of new queries over a KV cache plus their own keys/values (decoding).

  q, k, v [b, t, h, d] at `positions` [b, t] (consecutive per row); cache_k/v [b, h, s, d]
  with slot s holding position s, read for s < positions[:, 0] only (later slots may be
  stale). The new keys are masked by `decode_mask`. Scores and softmax in float32 over
  the cache and the new keys together, as `dot_product_attention` would over the cache
  with the new keys written in. -> [b, t, h, d].

  The cache is only read, so the caller writes the new keys/values once for all layers
  (writing per layer copies the cache).
  """
  scale = q.shape[-1] ** -0.5
  f32 = jnp.float32
  s_old = jnp.einsum("bqhd,bhkd->bhqk", q, cache_k, preferred_element_type=f32) * scale
  s_new = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=f32) * scale
  written = (jnp.arange(cache_k.shape[2]) < positions[:, :1])[:, None, None, :]
  neg = jnp.finfo(f32).min
  scores = jnp.concatenate([jnp.where(written, s_old, neg),
                            jnp.where(decode_mask(positions, positions, prefix_len),
                                      s_new, neg)], axis=-1)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  p_old, p_new = jnp.split(probs, [cache_k.shape[2]], axis=-1)
  return (jnp.einsum("bhqk,bhkd->bqhd", p_old, cache_v) +
          jnp.einsum("bhqk,bkhd->bqhd", p_new, v))


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


IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


def resolve_implementation(impl: str, dtype, prefix_lm: bool, head_dim: int) -> str:
  """The implementation `auto` picks on this platform (others are returned as given)."""
  if impl != "auto":
    return impl
  backend = partitioning.active_platform()
  # Splash masks are static (built once per shape); a prefix-LM mask depends on each row's
  # prefix length, a runtime value, so prefix-LM models take the XLA path on TPU.
  if backend == "tpu" and not prefix_lm and head_dim % 128 == 0:
    return "splash"
  if backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


def _splash(q, k, v, segment_ids):
  # Mosaic kernels are not partitioned by XLA: under a mesh, each device runs the kernel
  # on its own rows and heads (whole sequences), split by the logical axis rules.
  qkv = ("batch", "length", "heads", "kv")
  return partitioning.shard_map_logical(_splash_local, (qkv, qkv, qkv, ("batch", "length")),
                                        qkv, whole=("length", "kv"))(q, k, v, segment_ids)


def _splash_local(q, k, v, segment_ids):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, length, heads, head_dim = q.shape
  block = min(512, length)
  if length % block:
    raise ValueError(f"splash attention needs the sequence length ({length}) to be a "
                     f"multiple of {block}")
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        block_q_dq=block, block_kv_dq=block)
  mask = sm.MultiHeadMask([sm.CausalMask((length, length)) for _ in range(heads)])
  kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                              interpret=partitioning.active_platform() != "tpu")
  scale = head_dim ** -0.5
  # splash takes [heads, length, head_dim] per example and does not scale the logits.
  to_hld = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
  def one(q1, k1, v1, seg):
    out = kernel(to_hld(q1 * scale), to_hld(k1), to_hld(v1),
                 segment_ids=sk.SegmentIds(q=seg, kv=seg))
    return to_hld(out)
  return jax.vmap(one)(q, k, v, segment_ids)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array,
           prefix: jax.Array | None, impl: str = "auto") -> jax.Array:
  """Self-attention of a packed row: q/k/v [b, l, h, d] -> [b, l, h, d].

  segment_ids [b, l] (0 = padding), prefix [b, l] or None (causal). `impl` is one of
  IMPLEMENTATIONS; every choice gives the xla result up to float rounding.
  """
  impl = resolve_implementation(impl, q.dtype, prefix is not None, q.shape[-1])
  if impl == "splash":
    if prefix is not None:
      raise ValueError("splash attention supports causal attention only; prefix-LM models "
                       "need attention_impl='xla' or 'auto'")
    return _splash(q, k, v, segment_ids)
  mask = training_mask(segment_ids, prefix)
  if impl == "cudnn":
    if q.dtype not in (jnp.bfloat16, jnp.float16):
      raise ValueError(f"cuDNN attention needs a bfloat16 or float16 compute dtype, got "
                       f"{q.dtype}; set ModelConfig.dtype or attention_impl='auto'")
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
  if impl != "xla":
    raise ValueError(f"unknown attention implementation {impl!r}; use one of {IMPLEMENTATIONS}")
  return dot_product_attention(q, k, v, mask)
