"""Orbax checkpoints of the train state plus the data position, and parameter restore."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp


@gin.configurable
def make_manager(directory: str | Path, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (created), keeping the newest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_position: dict,
         force: bool = False) -> bool:
  """Saves `state` (a pytree) and the JSON `data_position` at `step`; async if enabled."""
  # Orbax serializes the JSON item in its background commit, after save() returns; the
  # caller keeps advancing its position dict, so hand orbax a snapshot of this step's.
  snapshot = json.loads(json.dumps(data_position))
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(snapshot)), force=force)


def _abstract(target):
  # Without a sharding, restore onto this process's first device (not into numpy).
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), target)


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None
            ) -> tuple[int, Any, dict]:
  """Restores (step, state, data_position) shaped and sharded like `target`.

  `target` may hold arrays or jax.ShapeDtypeStructs with shardings (restore onto another
  mesh). step None means the latest that restores: a partial or corrupt checkpoint is
  skipped with a warning naming it, and the one before it is tried. Raises
  FileNotFoundError when none restores.
  """
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  abstract = _abstract(target)
  for s in steps:
    try:
      out = manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many kinds for truncated or missing files
      if step is not None:
        raise
      logging.warning("checkpoint %s/%d does not restore (%s: %s); trying the previous one",
                      manager.directory, s, type(e).__name__, str(e).splitlines()[0][:200])
      continue
    logging.info("restored checkpoint step %d from %s", s, manager.directory)
    return s, out["state"], out["data"]
  raise FileNotFoundError(f"no checkpoint in {manager.directory} restores (tried {steps})")


def restore_params(checkpoint_dir: str | Path, abstract_params: Any, step: int | None = None):
  """Restores only the parameters of a train-state checkpoint (no optimizer state).

  abstract_params: pytree of ShapeDtypeStructs (with the shardings wanted here).
  Returns (step, params).
  """
  manager = ocp.CheckpointManager(Path(checkpoint_dir).absolute())
  try:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
    abstract = {"params": _abstract(abstract_params)}
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)))
  finally:
    manager.close()
  return step, out["state"]["params"]
