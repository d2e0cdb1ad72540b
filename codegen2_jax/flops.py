"""Model FLOPs per token and accelerator peaks, for MFU in the progress lines."""

from __future__ import annotations

import gin
import jax

from codegen2_jax.models.codegen import ModelConfig

# Dense bf16 peak FLOP/s per chip (vendor figures); matched against device_kind.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "H100": 989e12, "H200": 989e12,
    "A100": 312e12,
}


def training_flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
  """6 N for the matmul weights (embedding gather excluded, lm_head included) plus
  12 L d seq for attention scores and values, forward and backward."""
  non_embed = n_params - cfg.vocab_size * cfg.d_model
  return 6.0 * non_embed + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len


@gin.configurable
def peak_flops_per_device(override: float | None = None, device_kind: str | None = None
                          ) -> float | None:
  """Peak FLOP/s of one local device (or of a `device_kind`, e.g. 'TPU v4'): `override`
  (gin), else the table, else None (CPU)."""
  if override:
    return float(override)
  kind = device_kind or jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None
