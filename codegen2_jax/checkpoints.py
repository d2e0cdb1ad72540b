"""Orbax checkpoints of the train state plus the data position, and parameter restore.

A step holds three items: `state` (the train state), `data` (JSON: the data position in
batches) and `data_state` (each process's tf.data iterator state, the file
`process_<i>-of-<n>/` of DataStateHandler), so a resume continues the data without
replaying it (trainer.py; a step without `data_state` resumes by replay).

Every directory may be local or gs:// (codegen2_jax.storage; Orbax writes the arrays
through tensorstore). A step that does not restore (truncated files, a crash mid-write on
a filesystem without atomic renames) is skipped for the one before it. Training moves it aside first, to
`checkpoints/<step>.corrupt-<time>` (renamed, never deleted; orbax only lists all-digit
names), so the retrained step can be saved again; read-only users (sample, eval, convert)
skip it without touching the folder. A checkpoint of another model shape is no corruption:
it stops the restore with a ShapeMismatchError naming a parameter and both shapes.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

import gin
import jax
import orbax.checkpoint as ocp
from etils import epath

from codegen2_jax import storage


class CheckpointError(Exception):
  """A checkpoint cannot be restored or saved (the message says why, in one line)."""


class ShapeMismatchError(CheckpointError):
  """The checkpoints hold a model of another shape than the configured one."""


class SaveError(CheckpointError):
  """Writing a checkpoint failed (disk full, permissions, ...)."""


class _QuietOrbaxErrors(logging.Filter):
  """Drops orbax's error records: a failed background save logs each layer's traceback
  (hundreds of lines for one full disk); the failure surfaces as a SaveError instead."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


_QUIET = _QuietOrbaxErrors()


def _ignore_closed_loop_callbacks(unraisable) -> None:
  """sys.unraisablehook: after a failed async save, orbax's background threads cancel
  tasks of event loops already closed, and Python would print an "Event loop is closed"
  traceback for each (20 of them for one full disk), before the real error. Those, and
  only those, are dropped."""
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    _ignore_closed_loop_callbacks.previous(unraisable)
# Steps whose save was requested last, per manager: an async failure surfaces later.
_PENDING: dict[int, int] = {}


@gin.configurable
def make_manager(directory: storage.PathLike, max_to_keep: int = 3, async_save: bool = True
                 ) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` (created), keeping the newest `max_to_keep`."""
  if _QUIET not in logging.getLogger("absl").filters:
    logging.getLogger("absl").addFilter(_QUIET)
  if sys.unraisablehook is not _ignore_closed_loop_callbacks:
    _ignore_closed_loop_callbacks.previous = sys.unraisablehook
    sys.unraisablehook = _ignore_closed_loop_callbacks
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(storage.path(directory), options=options)


DATA_STATE = "data_state"  # the item holding each process's data iterator state


def _process_name(index: int | None = None, count: int | None = None) -> str:
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  return f"process_{index}-of-{count}"


class DataStateHandler(ocp.CheckpointHandler):
  """Orbax handler of the `data_state` item: on EVERY process, copies that process's
  data iterator state (files written beforehand into a local directory) into
  `<item>/process_<i>-of-<n>/`, and back on restore (T5X's DatasetCheckpointHandler
  pattern). tf.train.Checkpoint writes through TensorFlow's filesystem, which cannot
  reach every gs:// endpoint (the emulator, say); the copies go through
  codegen2_jax.storage, so model_dir may be local or gs://."""

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    target = storage.path(directory) / _process_name()
    target.mkdir(parents=True, exist_ok=True)
    try:
      for name in sorted(os.listdir(args.local_dir)):
        (target / name).write_bytes(open(os.path.join(args.local_dir, name), "rb").read())
    finally:
      shutil.rmtree(args.local_dir, ignore_errors=True)

  def restore(self, directory: epath.Path, args: "DataStateRestore") -> str:
    source = storage.path(directory) / _process_name()
    os.makedirs(args.local_dir, exist_ok=True)
    for f in source.iterdir():
      with open(os.path.join(args.local_dir, f.name), "wb") as out:
        out.write(f.read_bytes())
    return args.local_dir


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  """A local directory holding this process's iterator state (moved into the step)."""
  local_dir: str


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  """The local directory to copy this process's iterator state into."""
  local_dir: str


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_position: dict,
         force: bool = False, data_iterator=None) -> bool:
  """Saves `state` (a pytree), the JSON `data_position` and, given `data_iterator` (a
  pipeline.HostBatches), this process's data state at `step`; async if enabled.

  The data state is captured here, before this returns (an async save cannot let the
  loop's next batches in). Raises SaveError (one line: the cause and the last complete
  step) when this save, or the previous async one, fails.
  """
  # Orbax serializes the JSON item in its background commit, after save() returns; the
  # caller keeps advancing its position dict, so hand orbax a snapshot of this step's.
  snapshot = json.loads(json.dumps(data_position))
  items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(snapshot)}
  local = None
  if data_iterator is not None and (force or manager.should_save(step)):
    local = tempfile.mkdtemp(prefix="data_state_")
    try:
      data_iterator.save_state(local)
    except Exception as e:  # noqa: BLE001
      shutil.rmtree(local, ignore_errors=True)
      raise SaveError(f"saving the data state of step {step} failed: {_first_line(e)}") from e
    items[DATA_STATE] = DataStateSave(local)
  try:
    saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
  except Exception as e:  # noqa: BLE001  (orbax wraps the cause in several layers)
    if local is not None:
      shutil.rmtree(local, ignore_errors=True)
    raise _save_error(manager, None, e) from e  # this step's or the previous async one's
  if local is not None and not saved:  # the handler, which removes it, did not run
    shutil.rmtree(local, ignore_errors=True)
  _PENDING[id(manager)] = step
  return saved


def restore_data_state(directory: storage.PathLike, step: int, local_dir: str
                       ) -> str | None:
  """Copies this process's data state of `step` into `local_dir`. Returns None when
  done, else why it cannot be used (no data state in the step, or one written by
  another number of processes), for the replay warning."""
  item = storage.path(directory) / str(step) / DATA_STATE
  if not item.is_dir():
    return f"step {step} has no data state (it was written before data states were saved)"
  if not (item / _process_name()).is_dir():
    saved = sorted(p.name for p in item.iterdir() if p.name.startswith("process_"))
    return (f"step {step}'s data state was written by another number of processes "
            f"({', '.join(saved) or 'none'}; this run is {_process_name()})")
  DataStateHandler().restore(item, DataStateRestore(local_dir))
  return None


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for pending async saves and closes `manager`; SaveError if one failed."""
  try:
    manager.wait_until_finished()
    manager.check_for_errors()
  except Exception as e:  # noqa: BLE001
    raise _save_error(manager, None, e) from e
  finally:
    try:
      manager.close()
    except Exception:  # noqa: BLE001  (already reported above)
      pass


def _root_cause(e: BaseException) -> BaseException:
  """The operating-system error under `e` (an OSError with an errno, or tensorstore's
  "[os_error_code='28']" text, as an OSError), searching causes, contexts and exception
  groups; else `e`. Orbax's background commit nests the cause several layers deep."""
  stack, seen = [e], set()
  while stack:
    x = stack.pop()
    if id(x) in seen:
      continue
    seen.add(id(x))
    if isinstance(x, OSError) and x.errno:
      return x
    code = re.search(r"os_error_code='(\d+)'", str(x))
    if code:
      where = re.search(r'Failed writing: "([^"]+)"', str(x))
      return OSError(int(code.group(1)), os.strerror(int(code.group(1))),
                     *([where.group(1)] if where else []))
    stack.extend(getattr(x, "exceptions", ()))
    stack.extend(c for c in (x.__cause__, x.__context__) if c is not None)
  return e


_COMMIT_FILE = "commit_success.txt"  # orbax's marker of a finished step on GCS


def complete_steps(directory: storage.PathLike) -> list[int]:
  """Steps with a finished checkpoint in `directory`. Locally orbax renames a step's
  folder to its all-digit name only once every file is written; on GCS (no atomic
  rename) it writes into the all-digit folder and adds commit_success.txt last."""
  d = storage.path(directory)
  if not d.is_dir():
    return []
  steps = [p for p in d.iterdir() if p.name.isdigit()]
  if storage.is_remote(d):
    steps = [p for p in steps if (p / _COMMIT_FILE).exists()]
  return sorted(int(p.name) for p in steps)


def _no_checkpoint(directory) -> FileNotFoundError:
  """"no checkpoint in DIR", saying why when DIR is on GCS and holds step folders without
  orbax's commit marker (for instance a local checkpoint copied there with gsutil)."""
  d = storage.path(directory)
  hint = ""
  if storage.is_remote(d) and d.is_dir():
    unmarked = sorted(p.name for p in d.iterdir()
                      if p.name.isdigit() and not (p / _COMMIT_FILE).exists())
    if unmarked:
      hint = (f" (step folders {', '.join(unmarked)} lack {_COMMIT_FILE}, which orbax "
              f"writes last on GCS; if the copy is complete, add an empty "
              f"{_COMMIT_FILE} to each)")
  return FileNotFoundError(f"no checkpoint in {d}{hint}")


def _save_error(manager, step: int | None, e: BaseException) -> SaveError:
  cause = _root_cause(e)
  if step is None:  # the step folder orbax was writing, else the last one asked for
    m = re.search(r"/(\d+)\.orbax-checkpoint-tmp", f"{cause} {e}")
    step = int(m.group(1)) if m else _PENDING.get(id(manager))
  what = f"step {step}" if step is not None else "a checkpoint"
  hint = " (disk full: free space or move model_dir)" if getattr(
      cause, "errno", None) == errno.ENOSPC else ""
  good = complete_steps(manager.directory)
  last = f"step {good[-1]}" if good else "none"
  first = (str(cause).strip().splitlines() or [""])[0][:300]
  return SaveError(f"saving {what} to {manager.directory} failed: {type(cause).__name__}: "
                   f"{first}{hint}; the last good checkpoint is {last}")


def _abstract(target):
  # Without a sharding, restore onto this process's first device (not into numpy).
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, "sharding", None) or default), target)


def _param_shapes(tree: Any) -> dict[str, tuple]:
  """'blocks/fc_in' -> shape for every leaf of a parameter tree (nnx.State, dicts of
  arrays, ShapeDtypeStructs or orbax ArrayMetadata); nnx's trailing `value` is dropped."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if names and names[-1] == "value":
      names = names[:-1]
    out["/".join(names)] = tuple(getattr(leaf, "shape", ()))
  return out


def _check_shapes(step_dir: epath.Path, wanted: dict[str, tuple]) -> None:
  """Raises ShapeMismatchError if the checkpoint's arrays differ from `wanted` (only the
  top-level items `wanted` names are compared; parameters are reported first)."""
  meta = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
  tops = {k.split("/", 1)[0] for k in wanted}
  saved = {k: v for k, v in _param_shapes(getattr(meta, "item_metadata", meta)).items()
           if k.split("/", 1)[0] in tops}
  what = f"{step_dir} holds a model of another shape"
  fix = "train into a new model_dir, or use that run's settings (its config.gin)"
  for name in sorted(wanted, key=lambda k: (not k.startswith("params/"), k)):
    if name in saved and saved[name] != wanted[name]:
      raise ShapeMismatchError(
          f"{what}: parameter {name} has shape {list(saved[name])} there but "
          f"{list(wanted[name])} in this config; {fix}")
  if set(saved) != set(wanted):
    name = sorted(set(saved) ^ set(wanted), key=lambda k: (not k.startswith("params/"), k))[0]
    where = "in the checkpoint but not in this config" if name in saved else \
        "in this config but not in the checkpoint"
    raise ShapeMismatchError(f"{what}: parameter {name} is {where}; {fix}")


def _first_line(e: BaseException) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def _set_aside(directory: epath.Path, step: int) -> epath.Path:
  """Renames a step that does not restore to `<step>.corrupt-<time>` (process 0; all
  processes wait for it). Orbax never lists the new name, so the step can be saved again.
  On GCS the rename is a copy and a delete of every object."""
  target = directory / f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
  if jax.process_index() == 0:
    (directory / str(step)).rename(target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"set_aside_checkpoint_{step}")
  return target


def _restore_first_good(directory: epath.Path, steps: list[int], wanted: dict[str, tuple],
                        explicit: bool, set_aside: bool, load):
  """Tries `load(step)` newest first; see restore() for what happens to a bad step."""
  for i, s in enumerate(steps):
    if explicit and not (directory / str(s)).is_dir():
      raise FileNotFoundError(f"no checkpoint step {s} in {directory} (steps: "
                              f"{complete_steps(directory)})")
    try:
      _check_shapes(directory / str(s), wanted)
      return s, load(s)
    except ShapeMismatchError:
      raise
    except Exception as e:  # noqa: BLE001  (orbax raises many kinds for damaged files)
      if explicit:
        raise CheckpointError(f"checkpoint {directory}/{s} does not restore: "
                              f"{_first_line(e)}") from e
      nxt = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier step"
      if set_aside:
        moved = _set_aside(directory, s)
        msg = (f"checkpoint {directory}/{s} does not restore ({_first_line(e)}); moved it "
               f"aside to {moved.name}; {nxt}")
        logging.warning(msg)
      else:
        print(f"warning: checkpoint {directory}/{s} does not restore ({_first_line(e)}); "
              f"{nxt}", file=sys.stderr, flush=True)
  raise FileNotFoundError(f"no checkpoint in {directory} restores (tried {steps})")


def _readable(directory: epath.Path, step: int) -> bool:
  try:
    ocp.StandardCheckpointHandler().metadata(directory / str(step) / "state")
    return True
  except Exception:  # noqa: BLE001
    return False


def restore(manager: ocp.CheckpointManager, target: Any, step: int | None = None
            ) -> tuple[int, Any, dict]:
  """Restores (step, state, data_position) shaped and sharded like `target`.

  `target` may hold arrays or jax.ShapeDtypeStructs with shardings (restore onto another
  mesh). step None means the latest that restores: a partial or corrupt checkpoint is
  moved aside (see the module docstring) with a warning naming it, and the one before it
  is tried. Raises ShapeMismatchError for a checkpoint of another model shape,
  FileNotFoundError when none restores.
  """
  steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
  directory = storage.path(manager.directory)
  if not steps:
    raise _no_checkpoint(directory)
  abstract = _abstract(target)

  def load(s):
    return manager.restore(s, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))

  try:
    s, out = _restore_first_good(directory, steps, _param_shapes(target),
                                 explicit=step is not None, set_aside=True, load=load)
  finally:
    manager.reload()  # forget the steps moved aside
  logging.info("restored checkpoint step %d from %s", s, directory)
  return s, out["state"], out["data"]


def check_compatible(directory: storage.PathLike, params: Any) -> None:
  """Raises ShapeMismatchError if the newest readable checkpoint in `directory` holds
  parameters of other shapes than `params` (arrays, ShapeDtypeStructs or nnx.State).
  Reads metadata only: a cheap check before building and compiling a model."""
  wanted = _param_shapes({"params": params})
  directory = storage.path(directory)
  for s in reversed(complete_steps(directory)):
    if _readable(directory, s):
      _check_shapes(directory / str(s), wanted)
      return


def restore_params(checkpoint_dir: storage.PathLike, abstract_params: Any, step: int | None = None):
  """Restores only the parameters of a train-state checkpoint (no optimizer state).

  abstract_params: pytree of ShapeDtypeStructs (with the shardings wanted here).
  step None: the latest that restores; a step that does not is skipped (left in place)
  with one line on stderr. Returns (step, params).
  """
  directory = storage.path(checkpoint_dir)
  manager = ocp.CheckpointManager(directory)
  try:
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise _no_checkpoint(checkpoint_dir)
    abstract = {"params": _abstract(abstract_params)}

    def load(s):
      return manager.restore(s, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
              partial_restore=True)))

    s, out = _restore_first_good(directory, steps, _param_shapes({"params": abstract_params}),
                                 explicit=step is not None, set_aside=False, load=load)
  finally:
    manager.close()
  return s, out["state"]["params"]
