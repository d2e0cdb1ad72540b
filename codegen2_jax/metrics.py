"""Training metrics: console progress lines, metrics.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np


def _fmt_eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
  """Writes one record per logged step to `DIR/metrics.jsonl`, TensorBoard and the console.

  Only process 0 writes files; every process may call it. A run resumed from step
  `start_step` re-runs the steps after it, so their old records are dropped from
  metrics.jsonl and superseded in TensorBoard: every writer starts with a SessionLog.START
  event at start_step + 1, TensorBoard's own restart marker; from the second one on, its
  loader discards the events written before it at that step or later.
  """

  def __init__(self, model_dir: str | Path, total_steps: int, is_primary: bool = True,
               start_step: int = 0):
    self.total_steps = total_steps
    self.is_primary = is_primary
    self._jsonl = None
    self._tb = None
    if is_primary:
      model_dir = Path(model_dir)
      model_dir.mkdir(parents=True, exist_ok=True)
      _drop_records_after(model_dir / "metrics.jsonl", start_step)
      self._jsonl = open(model_dir / "metrics.jsonl", "a", encoding="utf-8")
      import tensorflow as tf  # TensorBoard's writer; tf is already a data dependency
      self._tb = tf.summary.create_file_writer(str(model_dir / "tensorboard"))
      _write_restart_marker(self._tb, start_step + 1)

  def write(self, step: int, metrics: dict[str, float], steps_per_s: float | None = None) -> None:
    """Records `metrics` (scalars) at `step` and prints a progress line."""
    record = {"step": int(step)}
    record.update({k: float(np.asarray(v)) for k, v in metrics.items()})
    if not self.is_primary:
      return
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    import tensorflow as tf
    with self._tb.as_default(step=int(step)):
      for k, v in record.items():
        if k != "step":
          tf.summary.scalar(k, v)
    self._tb.flush()
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
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    import tensorflow as tf
    with self._tb.as_default(step=int(step)):
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v))
    self._tb.flush()
    line = (f"eval   {step:>6d}/{self.total_steps} | loss {record['eval/loss']:.4f} | "
            f"perplexity {record['eval/perplexity']:.1f}")
    logging.info(line)
    print(line, flush=True)

  def close(self) -> None:
    if self._jsonl:
      self._jsonl.close()
    if self._tb:
      self._tb.close()


def _drop_records_after(path: Path, step: int) -> None:
  """Rewrites metrics.jsonl without the records of steps after `step` (atomically)."""
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    tmp.replace(path)
    logging.info("metrics.jsonl: dropped %d records after step %d (re-run after the "
                 "resume)", len(lines) - len(keep), step)


def _write_restart_marker(writer, step: int) -> None:
  """A SessionLog.START event at `step`. TensorBoard takes the first one in a log
  directory as the start and each later one as a restart: it then discards the events of
  steps >= `step` written before it (they belong to the run that was interrupted)."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2
  from tensorflow.python.ops import summary_ops_v2  # import_event has no public alias
  event = event_pb2.Event(step=step, wall_time=time.time(),
                          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
  with writer.as_default():
    summary_ops_v2.import_event(tf.constant(event.SerializeToString()))
  writer.flush()


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
