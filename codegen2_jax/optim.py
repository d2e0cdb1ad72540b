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


def _decay_mask(params):
  # Weight decay on matrices (embeddings, projections); never on biases or LayerNorm.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


@gin.configurable
def make_optimizer(schedule: optax.Schedule, b1: float = 0.9, b2: float = 0.95,
                   eps: float = 1e-8, weight_decay: float = 0.1, clip_norm: float = 1.0
                   ) -> optax.GradientTransformation:
  """AdamW (decoupled decay on ndim >= 2 params) after global-norm clipping.

  (Gradient accumulation lives in the train step: make_train_step.microbatches.)"""
  tx = optax.chain(
      optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
      optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                  mask=_decay_mask),
  )
  return tx
