"""The train state and one jit-compiled train step (loss, gradients, update, metrics)."""

from __future__ import annotations

from typing import Any

import gin
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from codegen2_jax.data.objective_ids import OBJECTIVE_NAMES

TrainState = dict[str, Any]  # {"step": int32 [], "params": nnx.State, "opt_state": ...}


def init_state(params: nnx.State, tx: optax.GradientTransformation) -> TrainState:
  """A fresh train state for `params` (an nnx.State of Params)."""
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


@gin.configurable(denylist=["graphdef", "params", "batch"])
def loss_fn(params: nnx.State, graphdef, batch: dict[str, jax.Array], z_loss: float = 1e-4):
  """Weighted token cross-entropy plus z-loss; returns (loss, per-token aux stats).

  batch: [b, l] int arrays `inputs`, `targets`, `loss_weights`, `segment_ids`,
  `positions`, `prefix`, `objective` (see data.converters).
  """
  model = nnx.merge(graphdef, params)
  logits = model(batch["inputs"], batch["segment_ids"], batch["positions"], batch["prefix"])
  weights = batch["loss_weights"].astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  log_z = jax.nn.logsumexp(logits, axis=-1)
  total = jnp.maximum(weights.sum(), 1.0)
  loss = ((xent + z_loss * jnp.square(log_z)) * weights).sum() / total
  correct = (logits.argmax(-1) == batch["targets"]).astype(jnp.float32)
  return loss, {"xent": xent, "correct": correct, "weights": weights}


def _metrics(aux, batch, grads, lr) -> dict[str, jax.Array]:
  w = aux["weights"]
  total = jnp.maximum(w.sum(), 1.0)
  m = {
      "loss": (aux["xent"] * w).sum() / total,
      "accuracy": (aux["correct"] * w).sum() / total,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": lr,
      "tokens": (batch["segment_ids"] > 0).sum(),
      "loss_tokens": w.sum(),
  }
  onehot = jax.nn.one_hot(batch["objective"], len(OBJECTIVE_NAMES)) * w[..., None]
  per_tokens = onehot.sum((0, 1))
  per_loss = (onehot * aux["xent"][..., None]).sum((0, 1))
  for i, name in enumerate(OBJECTIVE_NAMES):
    m[f"loss/{name}"] = per_loss[i] / jnp.maximum(per_tokens[i], 1.0)
    m[f"tokens/{name}"] = per_tokens[i]
  return m


def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule):
  """Returns train_step(state, batch) -> (state, metrics) (not yet jitted)."""

  def train_step(state: TrainState, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(state["params"], graphdef, batch)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = _metrics(aux, batch, grads, schedule(state["step"]))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  return train_step
