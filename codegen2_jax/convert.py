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

hf-to-orbax takes mp_num from the checkpoint's own `modeling_codegen.py` (the CodeGen2
repos ship one that assigns `mp_num = 8`), else from the shape of a released CodeGen or
CodeGen2 model, else from --mp_num (required then); an --mp_num that contradicts the
modeling file is refused. It writes `O/checkpoints/0` (parameters only, restorable by
`sample` and `eval`), `O/config.gin` with the model shape, and the checkpoint's tokenizer
as the run vocabulary `O/vocab/` (tokenizer.json, copied or built from vocab.json +
merges.txt + added_tokens.json; prompts without a leading <|endoftext|>, as the model
cards prompt). orbax-to-hf writes `config.json`, `model.safetensors` and, for a run with a
Hugging Face tokenizer, tokenizer.json + tokenizer_config.json + special_tokens_map.json.
Neither needs torch, except to read a `pytorch_model.bin`. Every directory may be a gs://
URL (read and written through codegen2_jax.storage; weights pass through a local temporary
file, as safetensors and torch read and write local files only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
from etils import epath

from codegen2_jax import storage
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


def _text(path: epath.Path, errors: str = "strict") -> str:
  """A file's text, decoded as UTF-8 (local or gs://)."""
  return path.read_bytes().decode("utf-8", errors=errors)


def _local(path: epath.Path, scratch: str | os.PathLike) -> str:
  """A local file path with `path`'s bytes: itself, or a copy in `scratch` for a URL
  (libraries that read files by name, safetensors, torch and tokenizers, read local files
  only)."""
  if not storage.is_remote(path):
    return os.fspath(path)
  local = Path(scratch) / f"{len(os.listdir(scratch))}_{path.name}"
  path.copy(local)
  return str(local)


def read_hf_config(path: str | Path) -> dict:
  """A Hugging Face config.json as a dict; malformed JSON is a ConversionError naming it."""
  path = storage.path(path)
  try:
    hf = json.loads(_text(path))
  except UnicodeDecodeError as e:
    raise ConversionError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
  except json.JSONDecodeError as e:
    raise ConversionError(f"{path} is not valid JSON ({e.msg} at line {e.lineno} column "
                          f"{e.colno})") from e
  if not isinstance(hf, dict):
    raise ConversionError(f"{path} holds a JSON {type(hf).__name__}, not an object")
  return hf


def _field(hf: dict, key: str, kind: str, source: str, default=None, required=True):
  """hf[key] checked to be `kind` ('int': a positive int, 'float': a positive number,
  'str'); a missing key is `default` unless `required`; null counts as missing."""
  if hf.get(key) is None:
    if required:
      raise ConversionError(f"{source} lacks {key!r}, which a CodeGen config needs")
    return default
  value = hf[key]
  ok = {"int": isinstance(value, int) and not isinstance(value, bool) and value > 0,
        "float": (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and value > 0),
        "str": isinstance(value, str)}[kind]
  if not ok:
    want = {"int": "a positive integer", "float": "a positive number", "str": "a string"}
    raise ConversionError(f"{source}: {key!r} must be {want[kind]}, not {value!r}")
  return value


def config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
  """ModelConfig from a Hugging Face CodeGen config.json dict (`source` names it in errors)."""
  model_type = hf.get("model_type")
  if model_type != "codegen":
    raise ConversionError(f"{source} has model_type {model_type!r}; expected 'codegen' (a "
                          "CodeGenForCausalLM checkpoint)")
  d = _field(hf, "n_embd", "int", source)
  heads = _field(hf, "n_head", "int", source)
  n_layer = _field(hf, "n_layer", "int", source)
  vocab = _field(hf, "vocab_size", "int", source)
  if d % heads:
    raise ConversionError(f"{source}: n_embd {d} is not divisible by n_head {heads}")
  rotary = _field(hf, "rotary_dim", "int", source, d // heads, required=False)
  if rotary > d // heads or rotary % 2:
    raise ConversionError(f"{source}: rotary_dim {rotary} must be even and at most the head "
                          f"size {d // heads}")
  act = _field(hf, "activation_function", "str", source, "gelu_new", required=False)
  if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
    raise ConversionError(f"{source}: activation_function {act!r} is not the tanh gelu "
                          "CodeGen uses")
  return ModelConfig(vocab_size=vocab, d_model=d, n_layers=n_layer, n_heads=heads,
                     head_dim=d // heads, rotary_dim=rotary,
                     d_ff=_field(hf, "n_inner", "int", source, 4 * d, required=False),
                     max_len=_field(hf, "n_positions", "int", source, 2048, required=False),
                     layer_norm_eps=float(_field(hf, "layer_norm_epsilon", "float", source,
                                                 1e-5, required=False)))


def config_to_hf(cfg: ModelConfig, eos_id: int | None = None) -> dict:
  """A Hugging Face CodeGen config.json dict for `cfg`; `eos_id` is the vocabulary's
  <|endoftext|> (CodeGen's bos and eos alike), None when unknown."""
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
      "bos_token_id": eos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
  }


# ---------------------------------------------------------------------------------------
# How many shards the fused qkv has (mp_num)

# (model, n_embd, n_layer, mp_num) of the released checkpoints: CodeGen 1 (mono/multi/nl)
# and CodeGen2 at 7B and 16B read with transformers' mp_num 4; CodeGen2-1B and -3.7B
# ship a modeling_codegen.py with mp_num 8. (CodeGen-16B and CodeGen2-16B share a shape.)
RELEASED_SHAPES = (
    ("CodeGen-350M", 1024, 20, 4), ("CodeGen-2B", 2560, 32, 4), ("CodeGen-6B", 4096, 33, 4),
    ("CodeGen-16B", 6144, 34, 4), ("CodeGen2-1B", 2048, 16, 8),
    ("CodeGen2-3.7B", 4096, 16, 8), ("CodeGen2-7B", 4096, 32, 4),
    ("CodeGen2-16B", 6144, 34, 4),
)

# A statement `mp_num = <int>` (any indentation, optional trailing comment); commented-out
# assignments and keyword arguments (`mp_num=mp_num`) do not match.
_MP_NUM_LINE = re.compile(r"^[ \t]*mp_num[ \t]*=[ \t]*(\d+)[ \t]*(?:#.*)?$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class MpNum:
  """The qkv shard count chosen for a checkpoint, and what decided it (for the user)."""
  value: int
  source: str


def modeling_file(hf_dir: str | Path, hf: dict) -> epath.Path | None:
  """The checkpoint's own modeling code: the module config.json's auto_map names for
  AutoModelForCausalLM (e.g. 'modeling_codegen.CodeGenForCausalLM'), else
  modeling_codegen.py; None when the directory has neither."""
  hf_dir = storage.path(hf_dir)
  names = []
  auto_map = hf.get("auto_map")
  if isinstance(auto_map, dict) and isinstance(auto_map.get("AutoModelForCausalLM"), str):
    ref = auto_map["AutoModelForCausalLM"].split("--")[-1]  # 'owner/repo--module.Class'
    names.append(ref.rsplit(".", 1)[0] + ".py")
  names.append("modeling_codegen.py")
  return next((hf_dir / n for n in names if (hf_dir / n).is_file()), None)


def mp_num_from_code(path: str | Path) -> tuple[int, int] | None:
  """(mp_num, line number) assigned in a modeling file, or None if it assigns no literal.
  Two different literal values are a ConversionError naming both lines."""
  text = _text(storage.path(path), errors="replace")
  found = [(int(m.group(1)), text.count("\n", 0, m.start()) + 1)
           for m in _MP_NUM_LINE.finditer(text)]
  if len({v for v, _ in found}) > 1:
    where = ", ".join(f"line {n}: mp_num = {v}" for v, n in found)
    raise ConversionError(f"{path} assigns different mp_num values ({where}); pass the "
                          "one its forward pass uses as --mp_num after fixing the file")
  return found[0] if found else None


def released_mp_num(cfg: ModelConfig) -> tuple[int, str] | None:
  """(mp_num, model names) when `cfg`'s width and depth are a released CodeGen shape that
  determines mp_num unambiguously, else None."""
  hits = [(mp, name) for name, d, n, mp in RELEASED_SHAPES
          if (d, n) == (cfg.d_model, cfg.n_layers)]
  if len({mp for mp, _ in hits}) != 1:
    return None
  return hits[0][0], " / ".join(name for _, name in hits)


def decide_mp_num(hf_dir: str | Path, hf: dict, cfg: ModelConfig,
                  explicit: int | None = None) -> MpNum:
  """The checkpoint's mp_num: its modeling file's `mp_num = N` (an `explicit` value that
  differs is an error), else `explicit`, else a released model's shape, else an error
  saying to pass --mp_num."""
  if explicit is not None and explicit < 1:
    raise ConversionError(f"--mp_num must be a positive integer, not {explicit}")
  code = modeling_file(hf_dir, hf)
  found = mp_num_from_code(code) if code else None
  if found:
    value, line = found
    if explicit is not None and explicit != value:
      raise ConversionError(f"--mp_num {explicit} contradicts {code} (line {line}: mp_num = "
                            f"{value}), the code these weights run with; drop --mp_num")
    return MpNum(value, f"{code} line {line}: mp_num = {value}")
  released = released_mp_num(cfg)
  if explicit is not None:
    note = ""
    if released and released[0] != explicit:
      note = f"; note that the released {released[1]} shape uses {released[0]}"
    return MpNum(explicit, f"--mp_num{note}")
  if released:
    return MpNum(released[0], f"the released {released[1]} shape (n_embd {cfg.d_model}, "
                              f"n_layer {cfg.n_layers})")
  why = (f"{code} assigns no literal mp_num" if code else "it has no modeling_codegen.py")
  raise ConversionError(
      f"cannot tell how {storage.path(hf_dir) / 'config.json'}'s fused qkv is sharded ({why}, and "
      f"n_embd {cfg.d_model} / n_layer {cfg.n_layers} is no released CodeGen shape): pass "
      "--mp_num=4 (transformers' CodeGenForCausalLM, CodeGen 1, CodeGen2-7B/16B) or "
      "--mp_num=8 (CodeGen2-1B/3.7B)")


# ---------------------------------------------------------------------------------------
# Weights


def _read_hf_weights(hf_dir: epath.Path) -> dict[str, np.ndarray]:
  st = sorted(hf_dir.glob("*.safetensors"), key=str)
  if st:
    from safetensors.numpy import load_file
    out = {}
    for f in st:
      with tempfile.TemporaryDirectory() as scratch:  # one shard on local disk at a time
        out.update(load_file(_local(f, scratch)))
    return out
  bins = sorted(hf_dir.glob("pytorch_model*.bin"), key=str)
  if bins:
    import torch  # only for the legacy pickle format
    out = {}
    for f in bins:
      with tempfile.TemporaryDirectory() as scratch:
        sd = torch.load(_local(f, scratch), map_location="cpu", weights_only=True)
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
# Tokenizers

EOS = "<|endoftext|>"


def _json_file(path: epath.Path) -> dict:
  try:
    data = json.loads(_text(path))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConversionError(f"{path} is not valid JSON ({e})") from e
  if not isinstance(data, dict):
    raise ConversionError(f"{path} holds a JSON {type(data).__name__}, not an object")
  return data


def _token_text(value) -> str | None:
  """'<x>' from a tokenizer_config / special_tokens_map entry ('<x>' or {'content': '<x>'})."""
  return value.get("content") if isinstance(value, dict) else value


def byte_level_bpe(hf_dir: str | Path):
  """A `tokenizers.Tokenizer` for a GPT-2 style slow tokenizer (vocab.json, merges.txt,
  optional added_tokens.json, special_tokens_map.json, tokenizer_config.json), encoding as
  transformers' GPT2TokenizerFast built from the same files does."""
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
  hf_dir = storage.path(hf_dir)
  try:
    with tempfile.TemporaryDirectory() as scratch:
      bpe = models.BPE.from_file(_local(hf_dir / "vocab.json", scratch),
                                 _local(hf_dir / "merges.txt", scratch))
  except Exception as e:  # tokenizers raises plain Exceptions for unreadable files
    raise ConversionError(f"{hf_dir}/vocab.json + merges.txt are not a BPE vocabulary "
                          f"({str(e).splitlines()[0]})") from e
  config = {}
  if (hf_dir / "tokenizer_config.json").is_file():
    config = _json_file(hf_dir / "tokenizer_config.json")
  tok = Tokenizer(bpe)
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(
      add_prefix_space=bool(config.get("add_prefix_space", False)))
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  special = {_token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token",
                                                  "pad_token")}
  if (hf_dir / "special_tokens_map.json").is_file():
    special |= {_token_text(v) for v in _json_file(hf_dir / "special_tokens_map.json").values()
                if not isinstance(v, list)}
  special = {t for t in special if isinstance(t, str)}
  # Special tokens of the base vocabulary (GPT-2's <|endoftext|>) keep their ids and are
  # matched whole in text, as transformers does.
  base = tok.get_vocab(with_added_tokens=False)
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                          for t in sorted(special) if t in base])
  path = hf_dir / "added_tokens.json"
  added = _json_file(path) if path.is_file() else {}
  bad = next(((t, i) for t, i in added.items()
              if not isinstance(i, int) or isinstance(i, bool)), None)
  if bad:
    raise ConversionError(f"{path}: the id of {bad[0]!r} must be an integer, not {bad[1]!r}")
  # Added tokens get ids in order after the base vocabulary: check the file's ids are those,
  # then add runs of same-kind tokens in one call each (one call per token is quadratic).
  next_id, runs = tok.get_vocab_size(with_added_tokens=False), []
  for token, i in sorted(added.items(), key=lambda kv: kv[1]):
    want = base.get(token, next_id)
    if i != want:
      raise ConversionError(f"{path} gives {token!r} id {i}, but it would get id {want}: "
                            "added ids must continue the vocabulary without gaps")
    if token not in base:
      next_id += 1
    kind = token in special
    if not runs or runs[-1][0] != kind:
      runs.append((kind, []))
    runs[-1][1].append(token)
  for kind, tokens in runs:
    if kind:
      tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    else:
      tok.add_tokens([AddedToken(t, normalized=True) for t in tokens])
  moved = next((t for t, i in added.items() if tok.token_to_id(t) != i), None)
  if moved is not None:  # e.g. the same token listed twice
    raise ConversionError(f"{path}: {moved!r} does not get its id {added[moved]}")
  return tok


def hf_tokenizer_file(hf_dir: str | Path, cfg: ModelConfig, scratch: str | Path
                      ) -> tuple[epath.Path, str] | None:
  """(tokenizer.json path, where it came from) for a Hugging Face directory: its own
  tokenizer.json, else one built from vocab.json + merges.txt into `scratch`; None when it
  has neither. A tokenizer with more ids than the model's embedding is refused."""
  from tokenizers import Tokenizer
  hf_dir = storage.path(hf_dir)
  path = hf_dir / "tokenizer.json"
  if path.is_file():
    try:
      tok = Tokenizer.from_str(_text(path))
    except Exception as e:  # tokenizers raises plain Exceptions for malformed files
      raise ConversionError(f"{path} is not a tokenizers file "
                            f"({str(e).splitlines()[0]})") from e
    source = f"copied from {path}"
  elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
    tok = byte_level_bpe(hf_dir)
    path = storage.path(scratch) / "tokenizer.json"
    tok.save(os.fspath(path))
    parts = [p for p in ("vocab.json", "merges.txt", "added_tokens.json")
             if (hf_dir / p).is_file()]
    source = f"built from {hf_dir}/{{{','.join(parts)}}}"
  else:
    return None
  n = tok.get_vocab_size(with_added_tokens=True)
  if n > cfg.vocab_size:
    raise ConversionError(f"the tokenizer of {hf_dir} has {n} ids but config.json's "
                          f"vocab_size is {cfg.vocab_size}")
  return path, source


def write_hf_tokenizer(vocabulary, out_dir: str | Path, max_len: int
                       ) -> tuple[int | None, str]:
  """Writes a run's vocabulary as Hugging Face tokenizer files into `out_dir` when it is a
  tokenizer.json (tokenizer.json, tokenizer_config.json, special_tokens_map.json).
  Returns (the <|endoftext|> id or None, a line saying what was written)."""
  from codegen2_jax.data import vocab as V
  if vocabulary is None:
    return None, "no tokenizer written: the run carries no vocabulary"
  try:
    kind, path = V.vocabulary_file(vocabulary)
  except TypeError as e:
    return None, f"no tokenizer written: {e}"
  if kind != "hf_tokenizer":
    return (vocabulary.eos_id, f"no tokenizer written: the run's vocabulary is a "
            f"SentencePiece model ({path}), not a Hugging Face tokenizer; config.json names "
            f"its {EOS} id {vocabulary.eos_id}")
  from tokenizers import Tokenizer
  out_dir = storage.path(out_dir)
  data = storage.path(path).read_bytes()  # the run's copy, local or gs://
  (out_dir / "tokenizer.json").write_bytes(data)
  eos_id = Tokenizer.from_str(data.decode("utf-8")).token_to_id(EOS)
  special = {} if eos_id is None else {"bos_token": EOS, "eos_token": EOS}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
            "clean_up_tokenization_spaces": False, **special}
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
  (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
  return eos_id, (f"wrote tokenizer.json, tokenizer_config.json, special_tokens_map.json "
                  f"(from {path}; {EOS} = {eos_id})")


# ---------------------------------------------------------------------------------------
# Directories


def model_config_gin(cfg: ModelConfig) -> str:
  """gin bindings that rebuild `cfg` (written beside converted checkpoints)."""
  lines = ["from codegen2_jax.models import codegen", ""]
  for field in dataclasses.fields(cfg):
    lines.append(f"ModelConfig.{field.name} = {getattr(cfg, field.name)!r}")
  return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Converted:
  """What hf_to_orbax wrote: the model shape, the qkv shard count and its source, and
  where the tokenizer came from (None: the directory has none)."""
  cfg: ModelConfig
  mp_num: MpNum
  tokenizer: str | None


def hf_to_orbax(hf_dir: str | Path, out_dir: str | Path, mp_num: int | None = None
                ) -> Converted:
  """Converts a Hugging Face CodeGen directory into `out_dir` (see module docstring).
  `mp_num` None: decided from the checkpoint (decide_mp_num)."""
  import jax
  from flax import nnx

  from codegen2_jax import checkpoints
  from codegen2_jax.data import vocab as V
  from codegen2_jax.models.codegen import CodeGen

  hf_dir, out_dir = storage.path(hf_dir), storage.path(out_dir)
  config_path = hf_dir / "config.json"
  if not config_path.is_file():
    raise ConversionError(f"{hf_dir} has no config.json: not a Hugging Face model directory")
  hf = read_hf_config(config_path)
  cfg = config_from_hf(hf, str(config_path))
  mp = decide_mp_num(hf_dir, hf, cfg, mp_num)
  with tempfile.TemporaryDirectory() as scratch:
    # Everything that can be refused is read before anything is written.
    tokenizer = hf_tokenizer_file(hf_dir, cfg, scratch)
    pure = params_from_hf(_read_hf_weights(hf_dir), cfg, mp.value)
    abstract = nnx.state(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jax.numpy.asarray, pure))
    storage.check_writable_dir(out_dir, "--out_dir")
    manager = checkpoints.make_manager(out_dir / "checkpoints", async_save=False)
    checkpoints.save(manager, 0, {"step": np.zeros((), np.int32), "params": abstract},
                     {"batches": 0, "converted_from": os.fspath(hf_dir),
                      "mp_num": mp.value})
    manager.wait_until_finished()
    manager.close()
    (out_dir / "config.gin").write_text(model_config_gin(cfg))
    if tokenizer:
      # The model cards prompt without a leading <|endoftext|> (runs trained here use one).
      V.save_to_run(V.HfTokenizerVocabulary(tokenizer[0]), out_dir, prepend_eos=False)
  return Converted(cfg, mp, tokenizer[1] if tokenizer else None)


def orbax_to_hf(checkpoint_dir: str | Path, out_dir: str | Path, mp_num: int = 4,
                gin_files: list[str] | None = None) -> tuple[ModelConfig, str]:
  """Writes our checkpoint (latest step) as a Hugging Face CodeGen directory, with the
  run's tokenizer when it has a Hugging Face one. Returns (the model shape, a line saying
  which tokenizer files were written)."""
  from flax import nnx
  from safetensors.numpy import save_file

  from codegen2_jax import restore

  try:
    r = restore.load(checkpoint_dir, gin_files or ())
  except restore.RestoreError as e:
    raise ConversionError(str(e)) from e
  cfg = r.model.cfg
  if mp_num < 1 or cfg.d_model % mp_num:
    raise ConversionError(f"mp_num {mp_num} does not divide the model width {cfg.d_model}")
  config_to_hf(cfg)  # refuses shapes Hugging Face cannot express before writing anything
  tensors = params_to_hf(nnx.state(r.model, nnx.Param).to_pure_dict(), cfg, mp_num)
  out_dir = storage.check_writable_dir(out_dir, "--out_dir")
  eos_id, tokenizer_note = write_hf_tokenizer(r.vocab, out_dir, cfg.max_len)
  if storage.is_remote(out_dir):  # safetensors writes local files only
    with tempfile.TemporaryDirectory() as scratch:
      save_file(tensors, os.path.join(scratch, "model.safetensors"), metadata={"format": "pt"})
      storage.path(os.path.join(scratch, "model.safetensors")).copy(
          out_dir / "model.safetensors", overwrite=True)
  else:
    save_file(tensors, os.fspath(out_dir / "model.safetensors"), metadata={"format": "pt"})
  (out_dir / "config.json").write_text(json.dumps(config_to_hf(cfg, eos_id), indent=2) + "\n")
  return cfg, tokenizer_note


def main(argv=None) -> int:
  from codegen2_jax import gin_config
  ap = argparse.ArgumentParser(prog="python -m codegen2_jax.convert", description=__doc__,
                               epilog=gin_config.macros_help(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="command", required=True)
  a = sub.add_parser("hf-to-orbax", help="Hugging Face CodeGen directory -> Orbax")
  a.add_argument("--hf_dir", required=True)
  a.add_argument("--out_dir", required=True)
  a.add_argument("--mp_num", type=int, default=None,
                 help="shards of the fused qkv (4 or 8); default: from the checkpoint's "
                      "modeling_codegen.py or a released model's shape")
  b = sub.add_parser("orbax-to-hf", help="our checkpoint -> Hugging Face CodeGen directory")
  b.add_argument("--checkpoint_dir", required=True)
  b.add_argument("--out_dir", required=True)
  b.add_argument("--mp_num", type=int, default=4,
                 help="shards of the fused qkv to write (transformers' class reads 4)")
  b.add_argument("--gin_file", action="append", help="model gin (default: the run's config.gin)")
  args = ap.parse_args(argv)
  try:
    if args.command == "hf-to-orbax":
      done = hf_to_orbax(args.hf_dir, args.out_dir, args.mp_num)
      cfg = done.cfg
      print(f"mp_num {done.mp_num.value}, from {done.mp_num.source}", file=sys.stderr)
      print(f"tokenizer: {done.tokenizer}; prompts without a leading {EOS}" if done.tokenizer
            else f"tokenizer: none in {args.hf_dir} (sample with --prompt_ids)",
            file=sys.stderr)
      extra = {"mp_num": done.mp_num.value, "mp_num_source": done.mp_num.source,
               "tokenizer": done.tokenizer}
    else:
      cfg, note = orbax_to_hf(args.checkpoint_dir, args.out_dir, args.mp_num, args.gin_file)
      print(note, file=sys.stderr)
      extra = {"mp_num": args.mp_num, "tokenizer": note}
  except (ConversionError, OSError) as e:  # OSError: a missing or unwritable folder
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out_dir": str(args.out_dir), "d_model": cfg.d_model,
                    "n_layers": cfg.n_layers, "vocab_size": cfg.vocab_size, **extra}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
