"""Shared by the benchmark scripts: time our real train step on one fixed batch."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from flax import nnx

from codegen2_jax import flops, optim, train_step
from codegen2_jax.models.codegen import CodeGen, ModelConfig, count_params


def time_train_step(cfg: ModelConfig, batch: dict, steps: int) -> dict:
  """Compiles the train step (model, loss, AdamW) and times `steps` steps on `batch`
  ([b, l] arrays of the converter's features). Returns params, step_s, tokens_per_s,
  model_tflops_per_s, first_step_s_incl_compile and the last loss."""
  abstract = nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0)))
  graphdef, _ = nnx.split(abstract, nnx.Param)
  n_params = count_params(abstract)
  schedule = optim.learning_rate_schedule(peak=1e-4, warmup_steps=10, total_steps=1000)
  tx = optim.make_optimizer(schedule)
  # Initialise on the device inside jit (a 1B state never passes through the host).
  state = jax.jit(lambda: train_step.init_state(
      nnx.state(CodeGen(cfg, nnx.Rngs(0)), nnx.Param), tx))()
  step = jax.jit(train_step.make_train_step(graphdef, tx, schedule), donate_argnums=0)
  data = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  t0 = time.perf_counter()
  state, m = step(state, data)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  state, m = step(state, data)  # warm-up
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, data)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / steps
  b, seq = data["targets"].shape
  per_token = flops.training_flops_per_token(cfg, n_params, seq)
  return {"params": n_params, "step_s": dt, "tokens_per_s": b * seq / dt,
          "model_tflops_per_s": per_token * b * seq / dt / 1e12,
          "first_step_s_incl_compile": compile_s, "loss": float(m["loss"])}
