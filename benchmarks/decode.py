"""CPU sampling speed: our jit decoder against Hugging Face `generate` on the same weights.

    python benchmarks/decode.py --model=small|100m [--prompt_len=64] [--new_tokens=N]
                                [--batches=1,16] [--repeats=N]

Builds one float32 CodeGen (the shapes of benchmarks/train_step.py) as a random
transformers `CodeGenForCausalLM`, converts its weights into our model
(`convert.params_from_hf`), and for each batch size times greedy generation of exactly
`new_tokens` tokens after random prompts of `prompt_len` ids (fixed seed): ours
(`decoding.generate`, stop_ids=()) and `model.generate(..., do_sample=False,
use_cache=True, min_new_tokens=max_new_tokens)` under torch.inference_mode(). Both get a
warm-up call (ours compiles there: reported as compile_s), then the repeats alternate
ours, theirs, ours, theirs... in this one process and the medians are compared, so load
from other jobs on the machine hits both alike. tokens/s counts generated tokens
(batch * new_tokens) over the whole call, prefill included. At batch 1 the two greedy
continuations are compared token by token (float32 rounding can flip a near-tie late:
the matching prefix length is reported).

torch's default intra-op threads (all cores) can be far slower than one thread for the
small per-token ops of decoding when the cores are shared with other jobs (its OpenMP
workers wait on each other), so HF is also timed with torch.set_num_threads(1) in the
same interleaved loop; `ratio` is against the default, `ratio_vs_best_hf` against the
faster of the two. ratio > 1 means ours is faster.

Prints one JSON object and a markdown table; writes benchmarks/results/decode_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from flax import nnx  # noqa: E402

from codegen2_jax import convert, decoding  # noqa: E402
from codegen2_jax.models.codegen import CodeGen, ModelConfig, count_params  # noqa: E402
from train_step import CONFIGS  # noqa: E402  (benchmarks/train_step.py)

# Per-model defaults that keep a run to a few minutes on 2 cores.
DEFAULTS = {"small": dict(new_tokens=128, repeats=3), "100m": dict(new_tokens=32, repeats=3)}


def build_models(name: str, seed: int = 0):
  """(our model, HF model) holding the same random float32 weights."""
  c = CONFIGS[name]
  cfg = ModelConfig(**{k: v for k, v in c.items() if k not in ("seq_len", "batch_size")},
                    max_len=c["seq_len"], dtype="float32", attention_impl="xla")
  torch.manual_seed(seed)
  hf = transformers.CodeGenForCausalLM(
      transformers.CodeGenConfig(**convert.config_to_hf(cfg), pad_token_id=0)).eval()
  with torch.no_grad():  # HF zero-inits biases and unit-inits LayerNorm: randomise all,
    for p in hf.parameters():  # so that greedy tokens are not decided by near-ties
      p.add_(torch.randn_like(p) * 0.02)
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
  pure = convert.params_from_hf(sd, cfg, mp_num=4)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jax.numpy.asarray, pure))
  return nnx.merge(graphdef, state), hf, cfg


def matching_prefix(a: list[int], b: list[int]) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def bench_batch(ours, hf, cfg, batch: int, prompt_len: int, new_tokens: int,
                repeats: int, hf_1thread: bool = True) -> dict:
  prompts = np.random.RandomState(batch).randint(3, cfg.vocab_size, (batch, prompt_len))
  ids = torch.tensor(prompts)
  mask = torch.ones_like(ids)

  def run_ours():
    t = time.perf_counter()
    out = decoding.generate(ours, prompts.tolist(), max_new_tokens=new_tokens,
                            temperature=0.0, stop_ids=())
    return time.perf_counter() - t, out

  default_threads = torch.get_num_threads()

  def run_hf(threads=default_threads):
    torch.set_num_threads(threads)
    try:
      t = time.perf_counter()
      with torch.inference_mode():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                          pad_token_id=0)
      return time.perf_counter() - t, out[:, prompt_len:].tolist()
    finally:
      torch.set_num_threads(default_threads)

  first_s, ours_out = run_ours()  # compiles the prefill and the decode loop
  hf_first_s, hf_out = run_hf()
  one_thread = hf_1thread and default_threads > 1
  if one_thread:
    run_hf(1)
  assert all(len(o) == new_tokens for o in ours_out + hf_out)
  ours_s, hf_s, hf1_s = [], [], []
  for _ in range(repeats):
    ours_s.append(run_ours()[0])
    hf_s.append(run_hf()[0])
    if one_thread:
      hf1_s.append(run_hf(1)[0])
  ours_med, hf_med = statistics.median(ours_s), statistics.median(hf_s)
  n = batch * new_tokens
  res = {"batch": batch, "ours_tokens_per_s": n / ours_med, "hf_tokens_per_s": n / hf_med,
         "ratio": hf_med / ours_med, "ours_s": ours_s, "hf_s": hf_s,
         "compile_s": first_s - ours_med, "ours_first_call_s": first_s,
         "hf_first_call_s": hf_first_s}
  if one_thread:
    hf1_med = statistics.median(hf1_s)
    res.update(hf_1thread_tokens_per_s=n / hf1_med, hf_1thread_s=hf1_s,
               ratio_vs_best_hf=min(hf_med, hf1_med) / ours_med)
  prefixes = [matching_prefix(a, b) for a, b in zip(ours_out, hf_out)]
  res["same_tokens"] = all(p == new_tokens for p in prefixes)
  res["matching_prefix"] = prefixes[0] if batch == 1 else min(prefixes)
  if not res["same_tokens"]:
    res["first_diff_index"] = min(prefixes)
  res["rows_identical"] = sum(p == new_tokens for p in prefixes)
  return res


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", choices=sorted(CONFIGS), default="small")
  ap.add_argument("--prompt_len", type=int, default=64)
  ap.add_argument("--new_tokens", type=int, default=None, help="default: 128 small, 32 100m")
  ap.add_argument("--batches", default="1,16")
  ap.add_argument("--repeats", type=int, default=None, help="default: 3")
  ap.add_argument("--out", default=None, help="default: benchmarks/results/decode_<model>.json")
  ap.add_argument("--no_hf_1thread", action="store_true",
                  help="skip the extra HF timing with torch.set_num_threads(1)")
  args = ap.parse_args()
  new_tokens = args.new_tokens or DEFAULTS[args.model]["new_tokens"]
  repeats = args.repeats or DEFAULTS[args.model]["repeats"]
  batches = [int(b) for b in args.batches.split(",") if b]

  ours, hf, cfg = build_models(args.model)
  out = {"model": args.model, "config": {**CONFIGS[args.model], "max_len": cfg.max_len},
         "params": count_params(ours), "dtype": "float32", "prompt_len": args.prompt_len,
         "new_tokens": new_tokens, "repeats": repeats, "decoding": "greedy",
         "jax": jax.__version__, "torch": torch.__version__,
         "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
         "cpu_count": os.cpu_count(), "devices": str(jax.devices()[0]),
         "date": time.strftime("%Y-%m-%d"),
         "command": "python benchmarks/decode.py " + " ".join(sys.argv[1:]),
         "ratio_is": "ours_tokens_per_s / hf_tokens_per_s (> 1: ours faster)",
         "load_average_at_start": os.getloadavg()[0], "batches": []}
  for b in batches:
    r = bench_batch(ours, hf, cfg, b, args.prompt_len, new_tokens, repeats,
                    hf_1thread=not args.no_hf_1thread)
    out["batches"].append(r)
    print(f"batch {b}: ours {r['ours_tokens_per_s']:.1f} tok/s, hf "
          f"{r['hf_tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)
  out["load_average_at_end"] = os.getloadavg()[0]
  path = Path(args.out) if args.out else (
      Path(__file__).resolve().parent / "results" / f"decode_{args.model}.json")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(json.dumps(out))
  print(f"\n{args.model} ({out['params'] / 1e6:.1f}M params, float32), prompt {args.prompt_len}, "
        f"{new_tokens} new tokens, greedy, median of {repeats}; torch threads "
        f"{out['torch_threads']}\n")
  t = out["torch_threads"]
  print(f"| batch | ours tokens/s | HF generate tokens/s ({t} threads) | ours / HF | "
        "HF tokens/s (1 thread) | ours / best HF | compile s | same tokens (matching "
        "prefix) |\n|---|---|---|---|---|---|---|---|")
  nan = float("nan")
  for r in out["batches"]:
    print(f"| {r['batch']} | {r['ours_tokens_per_s']:,.1f} | {r['hf_tokens_per_s']:,.1f} | "
          f"{r['ratio']:.2f} | {r.get('hf_1thread_tokens_per_s', nan):,.1f} | "
          f"{r.get('ratio_vs_best_hf', r['ratio']):.2f} | {r['compile_s']:.1f} | "
          f"{str(r['same_tokens']).lower()} ({r['matching_prefix']}/{new_tokens}) |")


if __name__ == "__main__":
  main()
