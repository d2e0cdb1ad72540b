"""AdamW with decoupled weight decay on matrices only, warmup + cosine, clipping, accumulation."""

from __future__ import annotations

import gin
import jax
import optax


@gin.configurable
def learning_rate_schedule(peak: float = 1e-3, warmup_steps: int = 100,
                           total_steps: int = gin.REQUIRED, end_fraction: float = 0.1
                           ) -> optax.Schedule:
  """Linear warmup from 0 to `peak`, then cosine decay to `end_fraction * peak`."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=max(1, min(warmup_steps, total_steps - 1)),
      decay_steps=max(total_steps, 2), end_value=peak * end_fraction)


# Weight decay is chosen by parameter NAME (the last key of its path), never by shape: the
# per-layer LayerNorm and bias vectors are stacked [layers, d], so "ndim >= 2" would decay
# them towards zero. A name in neither list is an error, so a new parameter is classified
# on purpose rather than silently decayed or not.
DECAYED = frozenset({"embed", "q", "k", "v", "out", "fc_in", "fc_out", "lm_head"})
NOT_DECAYED = frozenset({"ln_scale", "ln_bias", "ln_f_scale", "ln_f_bias", "fc_in_bias",
                         "fc_out_bias", "lm_head_bias"})


def _leaf_name(path) -> str:
  # nnx.State paths end in GetAttrKey('value') (the Param's array); the name is the dict
  # key before it.
  keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
  if not keys:
    raise ValueError(f"parameter at {jax.tree_util.keystr(path)} has no name")
  return str(keys[-1])


def decays(name: str) -> bool:
  """Whether AdamW decays the parameter `name`: embeddings and projection matrices (DECAYED)
  yes; LayerNorm scales/biases and every bias (NOT_DECAYED, or any name starting `ln_` or
  ending `bias`) no; any other name raises ValueError naming it."""
  if name in DECAYED:
    return True
  if name in NOT_DECAYED or name.startswith("ln_") or name.endswith("bias"):
    return False
  raise ValueError(f"parameter {name!r} is not classified for weight decay: add it to "
                   f"optim.DECAYED (a matrix) or optim.NOT_DECAYED")


def decay_mask(params):
  """Pytree of bools like `params` (an nnx.State or nested dict): True where AdamW decays."""
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(_leaf_name(path)), params)


@gin.configurable
def make_optimizer(schedule: optax.Schedule, b1: float = 0.9, b2: float = 0.95,
                   eps: float = 1e-8, weight_decay: float = 0.1, clip_norm: float = 1.0
                   ) -> optax.GradientTransformation:
  """AdamW after global-norm clipping; decoupled weight decay on embeddings and projection
  matrices only, by parameter name (`decays`; an unclassified name raises when the
  optimizer state is built, `tx.init`).

  (Gradient accumulation lives in the train step: make_train_step.microbatches.)"""
  tx = optax.chain(
      optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
      optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                  mask=decay_mask),
  )
  return tx
