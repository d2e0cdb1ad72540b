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

  Only process 0 writes files; every process may call it.
  """

  def __init__(self, model_dir: str | Path, total_steps: int, is_primary: bool = True):
    self.total_steps = total_steps
    self.is_primary = is_primary
    self._jsonl = None
    self._tb = None
    if is_primary:
      model_dir = Path(model_dir)
      model_dir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(model_dir / "metrics.jsonl", "a", encoding="utf-8")
      import tensorflow as tf  # TensorBoard's writer; tf is already a data dependency
      self._tb = tf.summary.create_file_writer(str(model_dir / "tensorboard"))

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


def reduce_window(steps: list[dict]) -> dict[str, float]:
  """Combines the per-step metrics of a log window: token counts are summed, per-objective
  losses and accuracies weighted by their token counts (`loss/X` by `tokens/X`), the rest
  averaged."""
  out = {}
  for k in steps[0]:
    vals = np.array([float(s[k]) for s in steps])
    if k == "skipped_steps":  # a running count: the latest value
      out[k] = float(vals[-1])
    elif k.startswith("tokens") or k == "loss_tokens":
      out[k] = float(vals.sum())
    elif k.startswith(("loss/", "accuracy/")):
      w = np.array([float(s["tokens/" + k.split("/", 1)[1]]) for s in steps])
      out[k] = float((vals * w).sum() / max(w.sum(), 1.0))
    else:
      out[k] = float(vals.mean())
  return out


class Throughput:
  """Tokens/s and steps/s between two calls of `tick`."""

  def __init__(self):
    self._t = time.perf_counter()

  def tick(self, tokens: float, steps: int) -> tuple[float, float]:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    self._t = now
    return tokens / dt, steps / dt
