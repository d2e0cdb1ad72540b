"""GPU figures: the real train step of a paper-size model on one GPU, and cuDNN attention.

    python benchmarks/gpu_train_step.py --model=1b [--steps=10] [--batch=8] [--seq=2048]

Prints one JSON object: per attention implementation, tokens/s, step time, model FLOPs
utilisation against the card's dense bf16 peak and against a bf16 matmul measured in the
same process, and peak GPU memory; plus the largest difference between cuDNN and XLA
attention on packed rows (segments and padding). Random tokens, the real model, optimizer
and train step (bf16 compute, float32 parameters and AdamW state, scan + full remat as in
gin/models/base.gin). Needs only jax, flax, optax and gin-config (no TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from codegen2_jax import gin_config  # noqa: E402
from codegen2_jax.models import attention  # noqa: E402
from codegen2_jax.models.codegen import ModelConfig  # noqa: E402
from timing import time_train_step  # noqa: E402  (benchmarks/timing.py)

DENSE_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def card_peak() -> tuple[str, float | None]:
  kind = jax.devices()[0].device_kind
  for name, peak in DENSE_BF16_PEAK.items():
    if name in kind:
      return kind, peak
  return kind, None


def measured_matmul_peak(n: int = 8192, reps: int = 10) -> float:
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a, a)
  out.block_until_ready()
  return 2 * n ** 3 * reps / (time.perf_counter() - t)


def packed_batch(batch: int, seq: int, vocab: int, segments: int = 4) -> dict:
  rng = np.random.RandomState(0)
  seg = np.repeat(np.arange(1, segments + 1), seq // segments)[None].repeat(batch, 0)
  seg[:, -seq // 16:] = 0  # some padding
  pos = (np.arange(seq) % (seq // segments))[None].repeat(batch, 0) * (seg > 0)
  toks = rng.randint(3, vocab, (batch, seq))
  real = (seg > 0).astype(np.int32)
  return {"inputs": toks, "targets": np.roll(toks, -1, 1), "loss_weights": real,
          "segment_ids": seg, "positions": pos, "prefix": np.zeros_like(seg),
          "objective": np.zeros_like(seg)}


def bench_train_step(cfg: ModelConfig, batch: int, seq: int, steps: int) -> dict:
  out = time_train_step(cfg, packed_batch(batch, seq, cfg.vocab_size), steps)
  stats = jax.devices()[0].memory_stats() or {}
  out["peak_memory_gb"] = stats.get("peak_bytes_in_use", 0) / 1e9
  return out


def attention_check(impl: str) -> float:
  rng = np.random.RandomState(1)
  b, seq, h, d = 2, 1024, 16, 128
  q, k, v = (jnp.asarray(rng.randn(b, seq, h, d), jnp.bfloat16) for _ in range(3))
  seg = np.repeat([1, 2, 3, 0], seq // 4)[None].repeat(b, 0)
  seg = jnp.asarray(seg, jnp.int32)
  want = attention.attend(q.astype(jnp.float32), k.astype(jnp.float32),
                          v.astype(jnp.float32), seg, None, "xla")
  got = attention.attend(q, k, v, seg, None, impl).astype(jnp.float32)
  real = np.asarray(seg > 0)
  return float(np.abs(np.asarray(got - want))[real].max())


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="1b")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--impls", default="cudnn,xla")
  args = ap.parse_args()
  gin_config.parse([f"gin/models/{args.model}.gin"], [f"ModelConfig.max_len = {args.seq}"])
  kind, peak = card_peak()
  out = {"device": kind, "jax": jax.__version__, "model": args.model, "batch": args.batch,
         "seq_len": args.seq, "card_bf16_peak_tflops": peak and peak / 1e12}
  out["measured_matmul_tflops"] = measured_matmul_peak() / 1e12
  for impl in args.impls.split(","):
    try:
      out[f"attention_maxdiff_{impl}_vs_xla_f32"] = attention_check(impl)
    except Exception as e:  # report, keep measuring the rest
      out[f"attention_maxdiff_{impl}_vs_xla_f32"] = f"error: {type(e).__name__}: {e}"[:400]
    try:
      cfg = ModelConfig(attention_impl=impl)
      r = bench_train_step(cfg, args.batch, args.seq, args.steps)
      r["mfu_vs_card_peak"] = peak and r["model_tflops_per_s"] * 1e12 / peak
      r["mfu_vs_measured_matmul"] = r["model_tflops_per_s"] / out["measured_matmul_tflops"]
      out[f"train_{impl}"] = r
    except Exception as e:
      traceback.print_exc()
      out[f"train_{impl}"] = f"error: {type(e).__name__}: {e}"[:400]
    print(json.dumps(out), flush=True)
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
