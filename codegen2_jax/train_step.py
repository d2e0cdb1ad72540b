"""The train state and one jit-compiled train step (loss, gradients, update, metrics).

One step is one optimizer update on the global batch. With `microbatches=k` the batch is
split into k slices whose gradients are accumulated in a `lax.scan` before the update;
the loss is normalised by the whole batch's loss tokens, so k slices give the full batch's
gradient (up to float rounding) in a k-th of the activation memory.
"""

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
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
          "skipped": jnp.zeros((), jnp.int32)}


@gin.configurable(denylist=["graphdef", "params", "batch"])
def loss_fn(params: nnx.State, graphdef, batch: dict[str, jax.Array], z_loss: float = 1e-4):
  """SUM over loss tokens of cross-entropy plus z-loss; returns (sum, per-token stats).

  batch: [b, l] int arrays `inputs`, `targets`, `loss_weights`, `segment_ids`,
  `positions`, `prefix`, `objective` (see data.converters).
  """
  model = nnx.merge(graphdef, params)
  logits = model(batch["inputs"], batch["segment_ids"], batch["positions"], batch["prefix"])
  weights = batch["loss_weights"].astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  log_z = jax.nn.logsumexp(logits, axis=-1)
  total = ((xent + z_loss * jnp.square(log_z)) * weights).sum()
  correct = (logits.argmax(-1) == batch["targets"]).astype(jnp.float32)
  return total, {"xent": xent, "correct": correct, "weights": weights}


def _sums(aux, batch) -> dict[str, jax.Array]:
  """Additive statistics of one (micro)batch; metrics are ratios of these."""
  w = aux["weights"]
  onehot = jax.nn.one_hot(batch["objective"], len(OBJECTIVE_NAMES)) * w[..., None]
  return {"xent": (aux["xent"] * w).sum(), "correct": (aux["correct"] * w).sum(),
          "weights": w.sum(), "tokens": (batch["segment_ids"] > 0).sum().astype(jnp.float32),
          "objective_tokens": onehot.sum((0, 1)),
          "objective_xent": (onehot * aux["xent"][..., None]).sum((0, 1)),
          "objective_correct": (onehot * aux["correct"][..., None]).sum((0, 1))}


def batch_sums(params: nnx.State, graphdef, batch) -> dict[str, jax.Array]:
  """Additive loss statistics of `batch` without gradients (for evaluation)."""
  _, aux = loss_fn(params, graphdef, batch)
  return _sums(aux, batch)


def _metrics(sums, grads, lr, skipped) -> dict[str, jax.Array]:
  total = jnp.maximum(sums["weights"], 1.0)
  m = {
      "loss": sums["xent"] / total,
      "accuracy": sums["correct"] / total,
      "grad_norm": optax.global_norm(grads),
      "learning_rate": lr,
      "tokens": sums["tokens"],
      "loss_tokens": sums["weights"],
      "skipped_steps": skipped,
  }
  for i, name in enumerate(OBJECTIVE_NAMES):
    n = jnp.maximum(sums["objective_tokens"][i], 1.0)
    m[f"loss/{name}"] = sums["objective_xent"][i] / n
    m[f"accuracy/{name}"] = sums["objective_correct"][i] / n
    m[f"tokens/{name}"] = sums["objective_tokens"][i]
  return m


@gin.configurable(denylist=["graphdef", "tx", "schedule"])
def make_train_step(graphdef, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    microbatches: int = 1, skip_nonfinite: bool = False):
  """Returns train_step(state, batch) -> (state, metrics) (not yet jitted).

  microbatches: gradient accumulation slices per step (must divide the batch).
  skip_nonfinite: a step whose loss or gradients are NaN/Inf leaves parameters and
    optimizer state unchanged and counts it in state['skipped'] (else the loop stops).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def grads_and_sums(params, batch):
    if microbatches == 1:
      (_, aux), grads = grad_fn(params, graphdef, batch)
      return grads, _sums(aux, batch)
    b = batch["targets"].shape[0]
    if b % microbatches:
      raise ValueError(f"batch {b} is not divisible by microbatches={microbatches}")
    sliced = jax.tree.map(lambda x: x.reshape((microbatches, b // microbatches) + x.shape[1:]),
                          batch)

    def one(mb):
      (_, aux), g = grad_fn(params, graphdef, mb)
      return g, _sums(aux, mb)

    def body(carry, mb):
      return jax.tree.map(jnp.add, carry, one(mb)), None

    first = one(jax.tree.map(lambda x: x[0], sliced))
    (grads, sums), _ = jax.lax.scan(body, first, jax.tree.map(lambda x: x[1:], sliced))
    return grads, sums

  def train_step(state: TrainState, batch):
    grads, sums = grads_and_sums(state["params"], batch)
    # The loss is a sum over tokens; normalise by the batch's loss tokens once.
    grads = jax.tree.map(lambda g: g / jnp.maximum(sums["weights"], 1.0), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    skipped = state["skipped"]
    if skip_nonfinite:
      ok = jnp.isfinite(sums["xent"]) & jnp.isfinite(optax.global_norm(grads))
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)  # noqa
      params, opt_state = keep(params, state["params"]), keep(opt_state, state["opt_state"])
      skipped = skipped + (~ok).astype(jnp.int32)
    metrics = _metrics(sums, grads, schedule(state["step"]), skipped)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "skipped": skipped}
    return new_state, metrics

  train_step.skip_nonfinite = skip_nonfinite
  return train_step
