"""Orbax checkpoints of the train state plus the data position, and parameter restore."""

from __future__ import annotations

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
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)), force=force)


def _abstract(target):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(
      x, "sharding", None)), target)


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None
            ) -> tuple[int, Any, dict]:
  """Restores (step, state, data_position) shaped and sharded like `target`.

  `target` may hold arrays or jax.ShapeDtypeStructs with shardings (restore onto another
  mesh). step None means the latest. Raises FileNotFoundError when there is none.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(target)), data=ocp.args.JsonRestore()))
  logging.info("restored checkpoint step %d from %s", step, manager.directory)
  return step, out["state"], out["data"]


def restore_params(checkpoint_dir: str | Path, abstract_params: Any, step: int | None = None):
  """Restores only the parameters of a train-state checkpoint (no optimizer state).

  abstract_params: pytree of ShapeDtypeStructs (with the shardings wanted here).
  Returns (step, params).
  """
  manager = ocp.CheckpointManager(Path(checkpoint_dir).absolute())
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir}")
  abstract = {"params": _abstract(abstract_params)}
  out = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)))
  return step, out["state"]["params"]
