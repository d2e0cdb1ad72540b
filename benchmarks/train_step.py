"""CPU train-step speed: ours against the float32 matmul peak and a PyTorch CodeGen step.

    python benchmarks/train_step.py --model=small|100m [--steps=5] [--no_torch]

Measures, side by side in one process: the float32 matmul rate through jax (4096^3), our
real train step (model, loss, AdamW, float32) on random packed rows, and
transformers' CodeGenForCausalLM + torch.optim.AdamW on the same shapes. Prints one JSON
object (tokens_per_s, mfu, matmul_peak_gflops, torch_tokens_per_s, config, ...) and a
markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from codegen2_jax.models.codegen import ModelConfig  # noqa: E402
from timing import time_train_step  # noqa: E402  (benchmarks/timing.py)

CONFIGS = {  # the CPU demo's model, and a ~100M one (768 wide, 12 layers, seq 512, batch 4)
    "small": dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, head_dim=64,
                  rotary_dim=32, d_ff=1024, seq_len=256, batch_size=8),
    "100m": dict(vocab_size=16384, d_model=768, n_layers=12, n_heads=12, head_dim=64,
                 rotary_dim=32, d_ff=3072, seq_len=512, batch_size=4),
}


def matmul_peak_gflops(n: int = 4096, reps: int = 10) -> float:
  """float32 n x n x n matmul rate through jax, GFLOP/s (best of 3 timings)."""
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = 0.0
  for _ in range(3):
    t = time.perf_counter()
    for _ in range(reps):
      out = f(a, a)
    out.block_until_ready()
    best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
  return best


def batch(cfg: dict) -> dict:
  rng = np.random.RandomState(0)
  b, l = cfg["batch_size"], cfg["seq_len"]
  toks = rng.randint(3, cfg["vocab_size"], (b, l + 1))
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_weights": np.ones((b, l)),
          "segment_ids": np.ones((b, l)), "positions": np.tile(np.arange(l), (b, 1)),
          "prefix": np.zeros((b, l)), "objective": np.zeros((b, l))}


def ours(cfg: dict, steps: int) -> dict:
  mcfg = ModelConfig(**{k: v for k, v in cfg.items() if k not in ("seq_len", "batch_size")},
                     max_len=cfg["seq_len"], dtype="float32", attention_impl="xla")
  return time_train_step(mcfg, batch(cfg), steps)


def torch_step(cfg: dict, steps: int) -> dict:
  import torch
  import transformers
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  hf = transformers.CodeGenConfig(
      vocab_size=cfg["vocab_size"], n_positions=cfg["seq_len"], n_embd=cfg["d_model"],
      n_layer=cfg["n_layers"], n_head=cfg["n_heads"], rotary_dim=cfg["rotary_dim"],
      n_inner=cfg["d_ff"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
  model = transformers.CodeGenForCausalLM(hf).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
  b = batch(cfg)
  ids = torch.tensor(b["inputs"])
  labels = torch.tensor(b["targets"])

  def one():
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)

  for _ in range(2):
    one()
  t = time.perf_counter()
  for _ in range(steps):
    one()
  dt = (time.perf_counter() - t) / steps
  return {"torch_step_s": dt, "torch_tokens_per_s": cfg["batch_size"] * cfg["seq_len"] / dt,
          "torch": torch.__version__}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", choices=sorted(CONFIGS), default="small")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--no_torch", action="store_true")
  args = ap.parse_args()
  cfg = CONFIGS[args.model]
  out = {"model": args.model, "config": cfg, "jax": jax.__version__,
         "devices": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
         "malloc": os.environ.get("LD_PRELOAD", "") or "default"}
  out["matmul_peak_gflops"] = matmul_peak_gflops()
  out.update(ours(cfg, args.steps))
  out["model_gflops_per_s"] = out["model_tflops_per_s"] * 1e3
  out["mfu"] = out["model_gflops_per_s"] / out["matmul_peak_gflops"]
  if not args.no_torch:
    out.update(torch_step(cfg, args.steps))
    out["ours_vs_torch"] = out["tokens_per_s"] / out["torch_tokens_per_s"]
  print(json.dumps(out))
  print(f"\n| model | tokens/s | MFU (vs jax f32 matmul {out['matmul_peak_gflops']:.0f} "
        f"GFLOP/s) | torch tokens/s | ours / torch |\n|---|---|---|---|---|\n"
        f"| {args.model} | {out['tokens_per_s']:,.0f} | {out['mfu']:.1%} | "
        f"{out.get('torch_tokens_per_s', float('nan')):,.0f} | "
        f"{out.get('ours_vs_torch', float('nan')):.2f} |")


if __name__ == "__main__":
  main()
