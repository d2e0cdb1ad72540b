"""The pretraining loop behind `python -m codegen2_jax.train` (see train.py).

The story: parse gin -> vocabulary -> mesh and model -> optimizer -> restore the latest
checkpoint (if any) -> data from the saved position -> train loop (log, checkpoint, stop
cleanly on SIGTERM) -> final checkpoint -> restore it and show a completion and an infill.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import time

import gin
import jax
import numpy as np
import optax
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from codegen2_jax import checkpoints, decoding, flops, metrics, optim, partitioning, storage
from codegen2_jax import train_step as ts
from codegen2_jax.data import epochs, pipeline
from codegen2_jax.data import vocab as V
from codegen2_jax.models.codegen import CodeGen, ModelConfig, count_params


def build_model(cfg: ModelConfig, seed: int, mesh, rules) -> CodeGen:
  """A CodeGen model initialised directly into its shardings on `mesh`."""
  abstract = nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(seed)))
  shardings = partitioning.state_shardings(nnx.state(abstract), mesh, rules)

  @jax.jit
  def init():
    model = CodeGen(cfg, nnx.Rngs(seed))
    return jax.lax.with_sharding_constraint(nnx.state(model), shardings)

  graphdef = nnx.graphdef(abstract)
  return nnx.merge(graphdef, init())


def build_train_step(cfg: ModelConfig, seed: int, train_steps: int, mesh, rules,
                     abstract: bool = False):
  """Model, optimizer, train state sharded on `mesh` and the jitted train step: the one
  construction shared by `train` and the AOT compile (aot.py).

  The optimizer state of each parameter (AdamW's moments) is sharded like the parameter;
  counters are replicated. Returns (model, graphdef, state, step_fn_raw, step_fn).
  abstract=True allocates nothing: the model comes from nnx.eval_shape and the state is
  ShapeDtypeStructs carrying the same shardings.
  """
  if abstract:
    model = nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(seed)))
  else:
    model = build_model(cfg, seed, mesh, rules)
  graphdef, params = nnx.split(model, nnx.Param)
  schedule = optim.learning_rate_schedule(total_steps=train_steps)
  tx = optim.make_optimizer(schedule)
  param_shardings = partitioning.state_shardings(params, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  shapes = jax.eval_shape(lambda p: ts.init_state(p, tx), params)
  state_shardings = jax.tree.map(lambda _: replicated, shapes)
  state_shardings["params"] = param_shardings
  state_shardings["opt_state"] = optax.tree_map_params(
      tx, lambda _, s: s, shapes["opt_state"], param_shardings,
      transform_non_params=lambda _: replicated)
  init = jax.jit(lambda p: ts.init_state(p, tx), out_shardings=state_shardings)
  if abstract:
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         shapes, state_shardings)
  else:
    state = init(params)
  step_fn_raw = ts.make_train_step(graphdef, tx, schedule)
  step_fn = jax.jit(step_fn_raw, donate_argnums=0, out_shardings=(state_shardings, None))
  return model, graphdef, state, step_fn_raw, step_fn


class SettingsError(ValueError):
  """A training setting is wrong (one line naming the setting and the fix)."""


def check_settings(**settings) -> None:
  """Checks the run's numeric settings before any work; SettingsError names the macro.

  train_steps, batch_size, seq_len, checkpoint_every, log_every: positive ints;
  eval_every: an int >= 0 (0: never); eval_batches: a positive int.
  """
  macro = {"train_steps": "TRAIN_STEPS", "batch_size": "BATCH_SIZE", "seq_len": "SEQ_LEN",
           "checkpoint_every": "CHECKPOINT_EVERY", "log_every": "LOG_EVERY",
           "eval_every": "train.eval_every", "eval_batches": "train.eval_batches"}
  for name, value in settings.items():
    label = macro.get(name, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise SettingsError(f"{label} must be an int, got {value!r} ({type(value).__name__})")
    least = 0 if name == "eval_every" else 1
    if value < least:
      if name == "train_steps":
        raise SettingsError(f"TRAIN_STEPS must be at least 1, got {value}: it is the step to "
                            "train up to (set --gin.TRAIN_STEPS=N)")
      raise SettingsError(f"{label} must be {'>= 0' if least == 0 else 'positive'}, "
                          f"got {value}")


def check_batch_split(batch_size: int, mesh, rules) -> None:
  """BATCH_SIZE must split evenly over the hosts and the devices the batch is sharded on."""
  hosts = jax.process_count()
  if batch_size % hosts:
    raise SettingsError(f"BATCH_SIZE {batch_size} does not divide over {hosts} hosts; use a "
                        f"multiple of {hosts}")
  spec = partitioning.batch_sharding(mesh, rules).spec
  axes = spec[0] if spec and spec[0] is not None else ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  devices = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if batch_size % devices:
    raise SettingsError(
        f"BATCH_SIZE {batch_size} does not divide over the {devices} data-parallel devices "
        f"(mesh axes {', '.join(axes)} of {dict(mesh.shape)}); use a multiple of {devices}")


def prepare_model_dir(model_dir: str) -> epath.Path:
  """Creates model_dir (local or gs://) and checks that it is a writable directory
  (SettingsError naming it if not: a file, read-only, a missing bucket, no credentials)."""
  try:
    return storage.check_writable_dir(model_dir, "model_dir")
  except OSError as e:
    raise SettingsError(str(e)) from e


class _Preemption:
  """Turns SIGTERM (TPU maintenance, Slurm, `kill`) into a flag the loop checks."""

  def __init__(self):
    self.requested = False
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not in the main thread (e.g. called from a test thread)
      pass

  def _handler(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and exiting")
    self.requested = True

  def release(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def show_samples(model_dir: str, cfg: ModelConfig, vocab, prompt: str, infill_prefix: str,
                 infill_suffix: str, max_new_tokens: int) -> dict[str, str]:
  """Restores the last checkpoint's parameters and prints a completion and an infill."""
  abstract = nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  step, params = checkpoints.restore_params(storage.join(model_dir, "checkpoints"),
                                            abstract_params)
  model = nnx.merge(graphdef, params)
  completion = decoding.complete(model, vocab, prompt, max_new_tokens)
  middle = decoding.infill(model, vocab, infill_prefix, infill_suffix, max_new_tokens)
  # Generated text in bold on a terminal, between ⟦ ⟧ elsewhere.
  on, off = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("⟦", "⟧")
  print(f"\n=== completion (checkpoint step {step}) ===\n{prompt}{on}{completion}{off}")
  print(f"\n=== infill (CodeGen2 format) ===\n{infill_prefix}{on}{middle}{off}"
        f"{infill_suffix}", flush=True)
  return {"completion": completion, "infill": middle}


def make_evaluator(graphdef, name: str, seq_len: int, batch_size: int, seed: int,
                   num_batches: int, split: str, batch_sharding):
  """params -> {'eval/loss', 'eval/perplexity', 'eval/loss/<objective>'} on a fixed set:
  the first `num_batches` batches of `split` (the same batches at every call)."""
  from codegen2_jax.data.objective_ids import OBJECTIVE_NAMES

  sums = jax.jit(lambda params, batch: ts.batch_sums(params, graphdef, batch))

  def evaluate(params) -> dict[str, float]:
    ds = pipeline.host_dataset(name, seq_len, batch_size, split=split, seed=seed,
                               shuffle=False)
    total = None
    for local in pipeline.batches(ds.take(num_batches)):
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in local.items()}
      s = jax.device_get(sums(params, batch))
      total = s if total is None else jax.tree.map(np.add, total, s)
    if total is None:
      raise ValueError(f"the {split} split of {name} yielded no batch of {batch_size}")
    loss = float(total["xent"] / max(total["weights"], 1.0))
    out = {"eval/loss": loss, "eval/perplexity": float(np.exp(min(loss, 50.0))),
           "eval/accuracy": float(total["correct"] / max(total["weights"], 1.0)),
           "eval/loss_tokens": float(total["weights"])}
    for i, obj in enumerate(OBJECTIVE_NAMES):
      if total["objective_tokens"][i] > 0:
        out[f"eval/loss/{obj}"] = float(total["objective_xent"][i] / total["objective_tokens"][i])
    return out

  return evaluate


def _process_label() -> str:
  return f"process {jax.process_index()}: " if jax.process_count() > 1 else ""


def resume_data(ds, checkpoint_dir, step: int | None, position: int,
                tracker: epochs.EpochTracker | None = None) -> pipeline.HostBatches:
  """This process's batches of `ds` from data position `position` (batches) of
  checkpoint `step`: restored from the step's saved iterator state, or, when the step
  has none for this process count, replayed (with one warning line saying why)."""
  if step is None or not position:
    return pipeline.HostBatches(ds, tracker)
  local = tempfile.mkdtemp(prefix="data_state_")
  try:
    start = time.perf_counter()
    why = checkpoints.restore_data_state(checkpoint_dir, step, local)
    if why is None:
      data = pipeline.HostBatches(ds, tracker)
      try:
        size = data.restore_state(local)
      except Exception as e:  # noqa: BLE001  (tf raises several kinds for a bad state)
        why = f"step {step}'s data state does not restore ({type(e).__name__})"
      else:
        print(f"{_process_label()}data: resumed at batch {position} from the saved state "
              f"({size} bytes, {time.perf_counter() - start:.2f} s; nothing replayed)",
              flush=True)
        return data
  finally:
    shutil.rmtree(local, ignore_errors=True)
  logging.warning("%sdata: %s; replaying %d batches to resume (they are read again)",
                  _process_label(), why, position)
  return pipeline.HostBatches(ds.skip(position), tracker)


@gin.configurable(denylist=["model_dir"])
def train(model_dir: str, *, mixture_or_task_name: str = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          seq_len: int = gin.REQUIRED, checkpoint_every: int = 1000, log_every: int = 50,
          seed: int = 0, sample_prompt: str = "def fibonacci(n):\n",
          infill_prefix: str = "def add(a, b):\n    ", infill_suffix: str = "\n",
          sample_tokens: int = 48, show_samples_at_end: bool = True, eval_every: int = 0,
          eval_batches: int = 8, eval_split: str = "validation",
          init_from: str | None = None) -> dict:
  """Trains for `train_steps` steps (resuming from the latest checkpoint in model_dir).

  Every `eval_every` steps (0: never) and at the end, the loss and perplexity on the first
  `eval_batches` batches of `eval_split` are logged as eval/* metrics.
  init_from: a run's model_dir or a converted checkpoint (local or gs://) whose parameters
  a run without checkpoints of its own starts from (fresh optimizer, step 0; init_from.py).
  Returns a summary dict: first and last logged loss, steps run, and the samples.
  """
  import tasks  # noqa: F401  (registers the stock tasks and mixtures)
  import seqio

  # Settings first: a wrong one fails in a line before any compilation.
  check_settings(train_steps=train_steps, batch_size=batch_size, seq_len=seq_len,
                 checkpoint_every=checkpoint_every, log_every=log_every,
                 eval_every=eval_every, eval_batches=eval_batches)
  model_dir = str(prepare_model_dir(model_dir))
  primary = jax.process_index() == 0
  try:
    mesh = partitioning.make_mesh()
  except ValueError as e:
    raise SettingsError(str(e)) from e
  rules = partitioning.logical_axis_rules()
  check_batch_split(batch_size, mesh, rules)

  # Vocabulary (a SentencePiece one is trained and cached once, a few seconds on the
  # embedded corpus); the run keeps a copy in model_dir/vocab/ and a resume must match it.
  vocab = seqio.get_mixture_or_task(mixture_or_task_name).output_features["targets"].vocabulary
  V.record_in_run(vocab, model_dir, write=primary)
  cfg = ModelConfig()
  try:  # too few rows: an error; many more: a warning
    V.check_model_rows(vocab.vocab_size, cfg.vocab_size)
  except ValueError as e:
    raise SettingsError(str(e)) from e

  # A model_dir holding a run of another model shape stops here (metadata only).
  checkpoints.check_compatible(storage.join(model_dir, "checkpoints"), nnx.state(
      nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(seed))), nnx.Param))

  # Model and optimizer on the mesh, sharded by the logical axis rules.
  model, graphdef, state, step_fn_raw, step_fn = build_train_step(cfg, seed, train_steps,
                                                                  mesh, rules)
  logging.info("model: %.2fM parameters, mesh %s", count_params(model) / 1e6, dict(mesh.shape))

  # Resume from the latest checkpoint, with the data position saved beside it.
  manager = checkpoints.make_manager(storage.join(model_dir, "checkpoints"))
  data_position = {"batches": 0}
  restored = None
  if manager.latest_step() is not None:
    try:  # a step that does not restore is moved aside, so its retrained step saves
      restored, state, data_position = checkpoints.restore(manager, state)
    except FileNotFoundError as e:  # every step was damaged (and is now set aside)
      logging.warning("%s; starting from step 0", e)
  start = int(state["step"])
  if start == 0 and init_from:  # a run's own checkpoints win: DIR only starts a new run
    from codegen2_jax import init_from as init_from_lib
    try:
      state = init_from_lib.init_params(state, init_from, vocab=vocab)
    except init_from_lib.InitFromError as e:
      raise SettingsError(str(e)) from e

  ds = pipeline.host_dataset(mixture_or_task_name, seq_len, batch_size, seed=seed)
  if jax.process_count() > 1:
    print(f"process {jax.process_index()}: reading data shard {jax.process_index()} of "
          f"{jax.process_count()}, {batch_size // jax.process_count()} rows per step",
          flush=True)
  # Which pass over each task the batches come from (multi-epoch runs), in the metrics.
  epoch_tracker = epochs.EpochTracker()
  data = resume_data(ds, manager.directory, restored, data_position["batches"], epoch_tracker)
  batch_sharding = partitioning.batch_sharding(mesh, rules)

  writer = metrics.MetricsWriter(model_dir, train_steps, is_primary=primary, start_step=start)
  flops_per_token = flops.training_flops_per_token(cfg, count_params(model), seq_len)
  peak = flops.peak_flops_per_device()  # None on CPU unless set: no MFU then
  evaluate = make_evaluator(graphdef, mixture_or_task_name, seq_len, batch_size, seed,
                            eval_batches, eval_split, batch_sharding) if eval_every else None
  preempt = _Preemption()
  clock = metrics.Throughput()
  first_loss = last_loss = None
  state_size_shown = False
  window = []
  step = start
  print(f"training {mixture_or_task_name}: steps {start}..{train_steps}, batch {batch_size} "
        f"x {seq_len} tokens, {count_params(model) / 1e6:.2f}M parameters", flush=True)
  # Activations are pinned to the mesh by logical axes when the step is traced.
  with partitioning.activation_sharding(mesh, rules):
    while step < train_steps:
      local = next(data)
      batch = {k: jax.make_array_from_process_local_data(batch_sharding, v)
               for k, v in local.items()}
      state, m = step_fn(state, batch)
      window.append(m)
      step += 1
      data_position["batches"] += 1
      if step == start + 1 and primary:
        storage.path(model_dir).joinpath("config.gin").write_text(gin.operative_config_str())
      if step % log_every == 0 or step == train_steps or step == start + 1:
        # Log the mean over the window since the last line (T5X style), not one noisy step.
        fetched = jax.device_get(window)
        window = []
        finite = [bool(np.isfinite(w["loss"]) and np.isfinite(w["grad_norm"])) for w in fetched]
        if not all(finite) and not step_fn_raw.skip_nonfinite:
          i = finite.index(False)
          raise FloatingPointError(
              f"non-finite loss or gradient at step {step - len(fetched) + 1 + i} (loss "
              f"{fetched[i]['loss']}, grad norm {fetched[i]['grad_norm']}); stopping (last "
              f"checkpoint: {manager.latest_step()}; make_train_step.skip_nonfinite=True "
              "skips such steps instead)")
        m = metrics.reduce_window([w for w, ok in zip(fetched, finite) if ok] or fetched)
        # The step counts the global batch's real tokens itself (all hosts together).
        tok_s, steps_s = clock.tick(sum(float(w["tokens"]) for w in fetched), len(fetched))
        m["tokens_per_s"] = tok_s
        m.update(epoch_tracker.metrics())
        for line in epoch_tracker.news() if primary else ():
          print(line, flush=True)
        if peak:
          m["mfu"] = tok_s * flops_per_token / (peak * jax.device_count())
        writer.write(step, m, steps_s)
        first_loss = float(m["loss"]) if first_loss is None else first_loss
        last_loss = float(m["loss"])
      if preempt.requested:  # save before anything else: the grace period is short
        checkpoints.save(manager, step, state, data_position, force=True, data_iterator=data)
        break
      if evaluate and (step % eval_every == 0 or step == train_steps):
        t_eval = time.perf_counter()
        writer.write_eval(step, evaluate(state["params"]))
        clock.exclude(time.perf_counter() - t_eval)  # not in the window's tokens/s
      if step % checkpoint_every == 0 or step == train_steps or preempt.requested:
        checkpoints.save(manager, step, state, data_position, force=preempt.requested,
                         data_iterator=data)
        if data.state_bytes is not None and not state_size_shown:
          state_size_shown = True
          print(f"{_process_label()}data state: {data.state_bytes} bytes per checkpoint",
                flush=True)
      if preempt.requested:  # it came during the evaluation: saved just above
        break
  checkpoints.finish(manager)  # SaveError: one line with the cause and the last good step
  preempt.release()
  writer.close()
  if preempt.requested:
    print(f"preempted: saved step {step} to {manager.directory}; rerun to resume",
          flush=True)
  config_gin = storage.path(model_dir) / "config.gin"
  if primary and not config_gin.exists():
    config_gin.write_text(gin.config_str())
  summary = {"first_loss": first_loss, "last_loss": last_loss, "steps": step - start,
             "final_step": step, "preempted": preempt.requested}
  if show_samples_at_end and not preempt.requested and primary:
    summary.update(show_samples(model_dir, cfg, vocab, sample_prompt, infill_prefix,
                                infill_suffix, sample_tokens))
  return summary
