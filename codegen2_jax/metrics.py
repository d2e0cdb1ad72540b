"""Training metrics: console progress lines, metrics.jsonl and TensorBoard event files.

The files go through the storage layer, so model_dir may be gs://. GCS objects cannot be
appended to: there, a growing file is kept in memory and the object rewritten at each
write (locally it is appended in place). TensorBoard event files are written here, with
tensorboard's own record framing and protos, not with tf.summary: on gs:// that would use
TensorFlow's GCS client, which honours neither gcsfs's credentials nor an emulator.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time

import numpy as np

from codegen2_jax import storage


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
  """Writes one record per logged step to `DIR/metrics.jsonl`, TensorBoard and the console.

  Only process 0 writes files; every process may call it. A run resumed from step
  `start_step` re-runs the steps after it, so their old records are dropped from
  metrics.jsonl and superseded in TensorBoard: every writer starts a new event file with a
  SessionLog.START event at start_step + 1, TensorBoard's own restart marker; from the
  second one on, its loader discards the events written before it at that step or later.
  """

  def __init__(self, model_dir: storage.PathLike, total_steps: int, is_primary: bool = True,
               start_step: int = 0):
    self.total_steps = total_steps
    self.is_primary = is_primary
    self._jsonl = None
    self._tb = None
    if is_primary:
      model_dir = storage.path(model_dir)
      model_dir.mkdir(parents=True, exist_ok=True)
      _drop_records_after(model_dir / "metrics.jsonl", start_step)
      self._jsonl = _GrowingFile(model_dir / "metrics.jsonl")
      self._tb = _EventFile(model_dir / "tensorboard")
      self._tb.write([_restart_marker(start_step + 1)])

  def write(self, step: int, metrics: dict[str, float], steps_per_s: float | None = None) -> None:
    """Records `metrics` (scalars) at `step` and prints a progress line."""
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    if not self.is_primary:
      return
    self._record(record)
    eta = (self.total_steps - step) / steps_per_s if steps_per_s else 0.0
    parts = [f"step {step:>6d}/{self.total_steps}", f"loss {record['loss']:.4f}"]
    if "learning_rate" in record:
      parts.append(f"lr {record['learning_rate']:.2e}")
    if "grad_norm" in record:
      parts.append(f"gnorm {record['grad_norm']:.2f}")
    if "tokens_per_s" in record:
      parts.append(f"tok/s {record['tokens_per_s']:,.0f}")
    if "mfu" in record:
      parts.append(f"MFU {record['mfu']:.1%}")
    parts.append(f"ETA {_fmt_eta(eta)}")
    logging.info(" | ".join(parts))
    print(" | ".join(parts), flush=True)

  def write_eval(self, step: int, metrics: dict[str, float]) -> None:
    """Records evaluation metrics (keys 'eval/...') at `step` and prints one line."""
    if not self.is_primary:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._record(record)
    line = (f"eval   {step:>6d}/{self.total_steps} | loss {record['eval/loss']:.4f} | "
            f"perplexity {record['eval/perplexity']:.1f}")
    logging.info(line)
    print(line, flush=True)

  def _record(self, record: dict) -> None:
    """One line of metrics.jsonl and one scalar event per metric (one write each)."""
    self._jsonl.append((json.dumps(record) + "\n").encode("utf-8"))
    step = record["step"]
    self._tb.write([_scalar_event(step, k, v) for k, v in record.items() if k != "step"])

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


class _GrowingFile:
  """A file written only at its end. Locally: opened in append mode, flushed at each
  append. On GCS: its content is kept in memory and the object rewritten whole at each
  append (an object is replaced atomically, so a reader sees the old or the new one)."""

  def __init__(self, path):
    self.path = storage.path(path)
    self._remote = storage.is_remote(self.path)
    if self._remote:
      self._data = bytearray(self.path.read_bytes() if self.path.exists() else b"")
      self._file = None
    else:
      self._file = open(os.fspath(self.path), "ab")  # a local path (storage.path made it absolute)

  def append(self, data: bytes) -> None:
    if self._remote:
      self._data += data
      self.path.write_bytes(bytes(self._data))
    else:
      self._file.write(data)
      self._file.flush()

  def close(self) -> None:
    if self._file:
      self._file.close()
      self._file = None


class _EventFile:
  """A new TensorBoard event file in `logdir` (events.out.tfevents.*), in TensorFlow's
  record format. Names sort in creation order (seconds, then microseconds), which is the
  order TensorBoard reads a folder's files in, so restart markers apply to earlier runs."""

  def __init__(self, logdir):
    from tensorboard.compat.proto import event_pb2
    logdir = storage.path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = (f"events.out.tfevents.{int(now):010d}.{int(now % 1 * 1e6):06d}."
            f"{socket.gethostname()}.{os.getpid()}.v2")
    self._file = _GrowingFile(logdir / name)
    self.write([event_pb2.Event(wall_time=now, file_version="brain.Event:2")])

  def write(self, events) -> None:
    """Appends `events` (event_pb2.Event) in one write."""
    from tensorboard.summary.writer.record_writer import RecordWriter
    buf = io.BytesIO()
    records = RecordWriter(buf)
    for e in events:
      records.write(e.SerializeToString())
    self._file.append(buf.getvalue())

  def close(self) -> None:
    self._file.close()


def _scalar_event(step: int, tag: str, value: float):
  """What tf.summary.scalar writes: a float32 tensor with the scalars plugin's metadata."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.plugins.scalar import summary_v2
  return event_pb2.Event(wall_time=time.time(), step=int(step),
                         summary=summary_v2.scalar_pb(tag, np.float32(value)))


def _drop_records_after(path, step: int) -> None:
  """Rewrites metrics.jsonl without the records of steps after `step` (atomically: a
  local file through a renamed temporary, a GCS object by replacing it)."""
  path = storage.path(path)
  if not path.is_file():
    return
  lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] > step:
        continue
    except (ValueError, KeyError, TypeError):  # a line cut by a crash: drop it too
      continue
    keep.append(line if line.endswith("\n") else line + "\n")
  if len(keep) != len(lines):
    if storage.is_remote(path):
      path.write_text("".join(keep), encoding="utf-8")
    else:
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text("".join(keep), encoding="utf-8")
      tmp.replace(path)
    logging.info("metrics.jsonl: dropped %d records after step %d (re-run after the "
                 "resume)", len(lines) - len(keep), step)


def _restart_marker(step: int):
  """A SessionLog.START event at `step`. TensorBoard takes the first one in a log
  directory as the start and each later one as a restart: it then discards the events of
  steps >= `step` written before it (they belong to the run that was interrupted)."""
  from tensorboard.compat.proto import event_pb2
  return event_pb2.Event(step=step, wall_time=time.time(),
                         session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))


def reduce_window(steps: list[dict]) -> dict[str, float]:
  """Combines the per-step metrics of a log window: token counts are summed, per-objective
  losses and accuracies weighted by their token counts (`loss/X` by `tokens/X`; left out
  when objective X had no tokens in the window), the rest averaged."""
  out = {}
  for k in steps[0]:
    vals = np.array([float(s[k]) for s in steps])
    if k == "skipped_steps":  # a running count: the latest value
      out[k] = float(vals[-1])
    elif k.startswith("tokens") or k == "loss_tokens":
      out[k] = float(vals.sum())
    elif k.startswith(("loss/", "accuracy/")):
      w = np.array([float(s["tokens/" + k.split("/", 1)[1]]) for s in steps])
      if w.sum() > 0:  # an objective with no tokens in the window has no loss, not 0.0
        out[k] = float((vals * w).sum() / w.sum())
    else:
      out[k] = float(vals.mean())
  return out


class Throughput:
  """Tokens/s and steps/s between two calls of `tick`."""

  def __init__(self):
    self._t = time.perf_counter()

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` spent on something else (an evaluation) out of this window."""
    self._t += seconds

  def tick(self, tokens: float, steps: int) -> tuple[float, float]:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    self._t = now
    return tokens / dt, steps / dt
