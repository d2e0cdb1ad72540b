"""Conversion between Hugging Face `CodeGenForCausalLM` directories and our Orbax checkpoints.

    python -m codegen2_jax.convert hf-to-orbax --hf_dir=D --out_dir=O [--mp_num=4|8]
    python -m codegen2_jax.convert orbax-to-hf --checkpoint_dir=O --out_dir=D [--mp_num=4]

Hugging Face fuses q, v, k into one `qkv_proj.weight` [3 d, d] stored in `mp_num` shards:
its rows read as `reshape(mp_num, 3, d // mp_num, d)` with each shard ordered [q, v, k],
and the output features of q (and k, v) numbered shard-first. CodeGen2-1B and -3.7B were
trained with mp_num 8, the others 4; the `transformers` class reads mp_num 4, so
`orbax-to-hf` writes 4 unless told otherwise. Our parameters are stored unfused:
q/k/v [d, heads, head_dim], out [heads, head_dim, d], and [in, out] matrices, each
stacked over layers on a leading axis.

hf-to-orbax writes `O/checkpoints/0` (parameters only, restorable by `sample` and `eval`)
and `O/config.gin` with the model shape. orbax-to-hf writes `config.json` and
`model.safetensors`. Neither needs torch, except to read a `pytorch_model.bin`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from codegen2_jax.models.codegen import ModelConfig


class ConversionError(ValueError):
  """The input is not a CodeGen checkpoint we can convert (the message says why)."""


# ---------------------------------------------------------------------------------------
# The fused qkv layout


def unfuse_qkv(qkv: np.ndarray, mp_num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """HF qkv_proj.weight [3 d, d] in `mp_num` shards -> (Wq, Wk, Wv), each [d_out, d_in]."""
  three_d, d = qkv.shape
  if three_d != 3 * d:
    raise ConversionError(f"qkv_proj.weight has shape {qkv.shape}; expected [3*d, d]")
  if d % mp_num:
    raise ConversionError(f"mp_num {mp_num} does not divide the model width {d}")
  w = qkv.reshape(mp_num, 3, d // mp_num, d)
  q, v, k = (w[:, i].reshape(d, d) for i in range(3))
  return q, k, v


def fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, mp_num: int) -> np.ndarray:
  """(Wq, Wk, Wv) [d_out, d_in] -> HF qkv_proj.weight [3 d, d] in `mp_num` shards."""
  d = q.shape[0]
  if d % mp_num:
    raise ConversionError(f"mp_num {mp_num} does not divide the model width {d}")
  parts = [x.reshape(mp_num, 1, d // mp_num, q.shape[1]) for x in (q, v, k)]
  return np.concatenate(parts, axis=1).reshape(3 * d, q.shape[1])


# ---------------------------------------------------------------------------------------
# Configs


def config_from_hf(hf: dict) -> ModelConfig:
  """ModelConfig from a Hugging Face CodeGen config.json dict."""
  if hf.get("model_type") != "codegen":
    raise ConversionError(f"config.json has model_type {hf.get('model_type')!r}; expected "
                          "'codegen' (a CodeGenForCausalLM checkpoint)")
  d, heads = hf["n_embd"], hf["n_head"]
  if d % heads:
    raise ConversionError(f"n_embd {d} is not divisible by n_head {heads}")
  act = hf.get("activation_function", "gelu_new")
  if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    raise ConversionError(f"activation_function {act!r} is not the tanh gelu CodeGen uses")
  return ModelConfig(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                     n_heads=heads, head_dim=d // heads,
                     rotary_dim=hf.get("rotary_dim") or d // heads,
                     d_ff=hf.get("n_inner") or 4 * d, max_len=hf.get("n_positions", 2048),
                     layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def config_to_hf(cfg: ModelConfig) -> dict:
  """A Hugging Face CodeGen config.json dict for `cfg`."""
  if cfg.n_heads * cfg.head_dim != cfg.d_model:
    raise ConversionError(f"Hugging Face CodeGen needs n_heads * head_dim == d_model; got "
                          f"{cfg.n_heads} * {cfg.head_dim} != {cfg.d_model}")
  return {
      "architectures": ["CodeGenForCausalLM"], "model_type": "codegen",
      "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_ctx": cfg.max_len,
      "n_embd": cfg.d_model, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
      "rotary_dim": cfg.rotary_dim, "n_inner": cfg.d_ff, "activation_function": "gelu_new",
      "layer_norm_epsilon": cfg.layer_norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
      "attn_pdrop": 0.0, "initializer_range": cfg.init_std, "tie_word_embeddings": False,
      "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32",
  }


# ---------------------------------------------------------------------------------------
# Weights


def _read_hf_weights(hf_dir: Path) -> dict[str, np.ndarray]:
  st = sorted(hf_dir.glob("*.safetensors"))
  if st:
    from safetensors.numpy import load_file
    out = {}
    for f in st:
      out.update(load_file(str(f)))
    return out
  bins = sorted(hf_dir.glob("pytorch_model*.bin"))
  if bins:
    import torch  # only for the legacy pickle format
    out = {}
    for f in bins:
      sd = torch.load(str(f), map_location="cpu", weights_only=True)
      out.update({k: v.float().numpy() for k, v in sd.items()})
    return out
  raise ConversionError(f"{hf_dir} holds no *.safetensors or pytorch_model*.bin weights")


def _take(weights: dict, name: str, shape: tuple) -> np.ndarray:
  if name not in weights:
    raise ConversionError(f"weight {name!r} is missing from the checkpoint")
  w = np.asarray(weights.pop(name), np.float32)
  if w.shape != tuple(shape):
    raise ConversionError(f"weight {name!r} has shape {w.shape} but config.json implies "
                          f"{tuple(shape)}")
  return w


def params_from_hf(weights: dict[str, np.ndarray], cfg: ModelConfig, mp_num: int) -> dict:
  """HF state dict (numpy) -> our parameter tree as a nested dict of numpy arrays."""
  weights = dict(weights)
  d, h, hd, f, vocab = cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.vocab_size
  if d % mp_num:
    raise ConversionError(f"mp_num {mp_num} does not divide the model width {d}")
  layers = []
  for i in range(cfg.n_layers):
    p = f"transformer.h.{i}."
    q, k, v = unfuse_qkv(_take(weights, p + "attn.qkv_proj.weight", (3 * d, d)), mp_num)
    layers.append({
        "ln_scale": _take(weights, p + "ln_1.weight", (d,)),
        "ln_bias": _take(weights, p + "ln_1.bias", (d,)),
        "q": q.T.reshape(d, h, hd), "k": k.T.reshape(d, h, hd), "v": v.T.reshape(d, h, hd),
        "out": _take(weights, p + "attn.out_proj.weight", (d, d)).T.reshape(h, hd, d),
        "fc_in": _take(weights, p + "mlp.fc_in.weight", (f, d)).T,
        "fc_in_bias": _take(weights, p + "mlp.fc_in.bias", (f,)),
        "fc_out": _take(weights, p + "mlp.fc_out.weight", (d, f)).T,
        "fc_out_bias": _take(weights, p + "mlp.fc_out.bias", (d,)),
    })
  params = {
      "embed": _take(weights, "transformer.wte.weight", (vocab, d)),
      # our layers are stacked on a leading axis (see models.codegen)
      "blocks": {name: np.stack([layer[name] for layer in layers]) for name in layers[0]},
      "ln_f_scale": _take(weights, "transformer.ln_f.weight", (d,)),
      "ln_f_bias": _take(weights, "transformer.ln_f.bias", (d,)),
      "lm_head": _take(weights, "lm_head.weight", (vocab, d)).T,
      "lm_head_bias": _take(weights, "lm_head.bias", (vocab,)),
  }
  # Non-persistent buffers some exports carry; everything else left over is unexpected.
  leftover = [k for k in weights if not k.endswith((".attn.causal_mask", ".attn.masked_bias",
                                                     ".attn.bias", "embed_positions"))]
  if leftover:
    raise ConversionError(f"unexpected weights for a {cfg.n_layers}-layer CodeGen: "
                          f"{leftover[:5]}{' ...' if len(leftover) > 5 else ''}")
  return params


def params_to_hf(params: dict, cfg: ModelConfig, mp_num: int = 4) -> dict[str, np.ndarray]:
  """Our parameter tree (nested dict of arrays) -> HF state dict of numpy arrays."""
  d = cfg.d_model
  a = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  out = {"transformer.wte.weight": a(params["embed"]),
         "transformer.ln_f.weight": a(params["ln_f_scale"]),
         "transformer.ln_f.bias": a(params["ln_f_bias"]),
         "lm_head.weight": a(np.asarray(params["lm_head"]).T),
         "lm_head.bias": a(params["lm_head_bias"])}
  for i in range(cfg.n_layers):
    b = {name: np.asarray(x)[i] for name, x in params["blocks"].items()}
    p = f"transformer.h.{i}."
    flat = lambda w: np.asarray(w).reshape(d, d).T  # noqa: E731  [d_in, H, hd] -> [out, in]
    out[p + "ln_1.weight"] = a(b["ln_scale"])
    out[p + "ln_1.bias"] = a(b["ln_bias"])
    out[p + "attn.qkv_proj.weight"] = a(fuse_qkv(flat(b["q"]), flat(b["k"]), flat(b["v"]),
                                                 mp_num))
    out[p + "attn.out_proj.weight"] = a(np.asarray(b["out"]).reshape(d, d).T)
    out[p + "mlp.fc_in.weight"] = a(np.asarray(b["fc_in"]).T)
    out[p + "mlp.fc_in.bias"] = a(b["fc_in_bias"])
    out[p + "mlp.fc_out.weight"] = a(np.asarray(b["fc_out"]).T)
    out[p + "mlp.fc_out.bias"] = a(b["fc_out_bias"])
  return out


# ---------------------------------------------------------------------------------------
# Directories


def model_config_gin(cfg: ModelConfig) -> str:
  """gin bindings that rebuild `cfg` (written beside converted checkpoints)."""
  import dataclasses
  lines = ["from codegen2_jax.models import codegen", ""]
  for field in dataclasses.fields(cfg):
    lines.append(f"ModelConfig.{field.name} = {getattr(cfg, field.name)!r}")
  return "\n".join(lines) + "\n"


def hf_to_orbax(hf_dir: str | Path, out_dir: str | Path, mp_num: int = 4) -> ModelConfig:
  """Converts a Hugging Face CodeGen directory into `out_dir` (see module docstring)."""
  import jax
  from flax import nnx

  from codegen2_jax import checkpoints
  from codegen2_jax.models.codegen import CodeGen

  hf_dir, out_dir = Path(hf_dir), Path(out_dir)
  if not (hf_dir / "config.json").is_file():
    raise ConversionError(f"{hf_dir} has no config.json: not a Hugging Face model directory")
  cfg = config_from_hf(json.loads((hf_dir / "config.json").read_text()))
  pure = params_from_hf(_read_hf_weights(hf_dir), cfg, mp_num)
  abstract = nnx.state(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jax.numpy.asarray, pure))
  out_dir.mkdir(parents=True, exist_ok=True)
  manager = checkpoints.make_manager(out_dir / "checkpoints", async_save=False)
  checkpoints.save(manager, 0, {"step": np.zeros((), np.int32), "params": abstract},
                   {"batches": 0, "converted_from": str(hf_dir.absolute())})
  manager.wait_until_finished()
  manager.close()
  (out_dir / "config.gin").write_text(model_config_gin(cfg))
  return cfg


def orbax_to_hf(checkpoint_dir: str | Path, out_dir: str | Path, mp_num: int = 4,
                gin_files: list[str] | None = None) -> ModelConfig:
  """Writes our checkpoint (latest step) as a Hugging Face CodeGen directory."""
  from flax import nnx
  from safetensors.numpy import save_file

  from codegen2_jax import checkpoints, gin_config
  from codegen2_jax.models.codegen import CodeGen

  ckpt = Path(checkpoint_dir).absolute()
  run_dir = ckpt if (ckpt / "checkpoints").is_dir() else ckpt.parent
  ckpt = ckpt / "checkpoints" if (ckpt / "checkpoints").is_dir() else ckpt
  files = gin_files or [str(run_dir / "config.gin")]
  if not Path(files[0]).is_file():
    raise ConversionError(f"{files[0]} not found: the model shape is unknown (pass --gin_file)")
  import tasks  # noqa: F401  (a run's config.gin names tasks and trainer settings)
  from codegen2_jax import trainer  # noqa: F401
  gin_config.parse(files, [])
  cfg = ModelConfig()
  hf_config = config_to_hf(cfg)
  if cfg.d_model % mp_num:
    raise ConversionError(f"mp_num {mp_num} does not divide the model width {cfg.d_model}")
  _, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(ckpt, abstract)
  tensors = params_to_hf(params.to_pure_dict(), cfg, mp_num)
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  return cfg


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.convert", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  a = sub.add_parser("hf-to-orbax", help="Hugging Face CodeGen directory -> Orbax")
  a.add_argument("--hf_dir", required=True)
  a.add_argument("--out_dir", required=True)
  a.add_argument("--mp_num", type=int, default=4, help="shards of the fused qkv (4 or 8)")
  b = sub.add_parser("orbax-to-hf", help="our checkpoint -> Hugging Face CodeGen directory")
  b.add_argument("--checkpoint_dir", required=True)
  b.add_argument("--out_dir", required=True)
  b.add_argument("--mp_num", type=int, default=4)
  b.add_argument("--gin_file", action="append", help="model gin (default: the run's config.gin)")
  args = ap.parse_args(argv)
  try:
    if args.command == "hf-to-orbax":
      cfg = hf_to_orbax(args.hf_dir, args.out_dir, args.mp_num)
    else:
      cfg = orbax_to_hf(args.checkpoint_dir, args.out_dir, args.mp_num, args.gin_file)
  except (ConversionError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out_dir": str(args.out_dir), "d_model": cfg.d_model,
                    "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
