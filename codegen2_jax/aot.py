"""Ahead-of-time compile of the real train step for a TPU slice, on any machine (a CPU one).

    python -m codegen2_jax.aot --gin_file=gin/runs/pretrain_16b.gin --topology=v4-512 \\
        [--num_slices=N] [--gin_file=gin/hardware/fsdp_tp.gin] [--gin.NAME=VALUE ...]

The step is built by the code that trains (`trainer.build_train_step`: model, optimizer,
state shardings, jitted step; `partitioning`'s batch sharding and activation
constraints), but from abstract values (ShapeDtypeStructs) on the compile-only devices of
a TPU topology (`jax.experimental.topologies`; needs libtpu: `pip install -e '.[tpu]'`),
and compiled by the TPU compiler. Nothing is allocated and no data is read: the batch is
[BATCH_SIZE, SEQ_LEN] int32 arrays.

`gin/hardware/tpu.gin` is read first (FSDP over every chip, bfloat16, splash attention);
the --gin_file's that follow (a run file, another mesh preset) and --gin overrides win.

Prints one JSON object: per-chip bytes of the arguments (train state and batch shards),
outputs, temporaries, generated code and the peak the compiler plans ("total"), the chip's
HBM and what the compiler lets a program use, whether it fits, and FLOPs per chip: XLA's
count, the traced step's matmuls and the model's 6N + attention, with the step time at
peak and the MFU they imply. Exit status 0 when it fits, 1 when it does not (the JSON and
a line on stderr say by how much and name the largest buffers), 2 on a usage error.

Topologies: Cloud TPU accelerator names v4-N and v5p-N (N TensorCores: N/2 chips, one
megacore device per chip), v5litepod-N or v5e-N (N chips), or a libtpu topology name such
as v4:2x2x4. `--num_slices=N` (default 1): N such slices joined over DCN (multislice);
the run's gin must then say so too (`gin/hardware/multislice.gin`: make_mesh.dcn_data).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1 << 30

# Standard slice shapes by chip count: 3D tori (v4, v5p), 2D (v5e).
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              192: "4x4x12", 256: "4x8x8", 384: "4x8x12", 512: "8x8x8", 768: "8x8x12",
              1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str         # libtpu's name: the "v4" of "v4:2x2x1"
  hbm_bytes: int          # HBM per chip (per jax device: v4 and v5p run as megacore)
  usable_hbm_bytes: int   # what the TPU compiler lets one program use (its OOM message)
  cores_per_chip: int     # TensorCores per chip, as accelerator names count them
  shapes: dict


CHIPS = {
    "v4": Chip("v4", 32 * GIB, int(30.75 * GIB), 2, _SHAPES_3D),
    "v5p": Chip("v5p", 95 * GIB, int(95.74 * GIB), 2, _SHAPES_3D),
    "v5e": Chip("v5e", 16 * GIB, int(15.75 * GIB), 1, _SHAPES_2D),
}
_ALIASES = {"v4": "v4", "v5p": "v5p", "v5": "v5p", "v5e": "v5e", "v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Target:
  name: str               # as given: v4-512
  chip: Chip
  dims: tuple             # chips along each axis: (4, 8, 8)
  slices: int = 1         # multislice: this many such slices, joined over DCN

  @property
  def topology_name(self) -> str:
    return f"{self.chip.generation}:{'x'.join(map(str, self.dims))}"

  @property
  def chips(self) -> int:
    """Chips of all slices."""
    return int(np.prod(self.dims)) * self.slices

  def devices(self) -> list:
    """The compile-only jax devices of the slice(s), one per chip (with a slice_index)."""
    from jax.experimental import topologies
    d = self.dims
    kwargs = {"chip_config_name": "megacore" if self.chip.cores_per_chip == 2 else "default"}
    if len(d) == 3:  # hosts of 2x2x1 chips; a full torus from 4x4x4 up
      kwargs["chips_per_host_bounds"] = (min(d[0], 2), min(d[1], 2), 1)
      kwargs["wrap"] = (min(d) >= 4,) * 3
    else:  # v5e: one host of up to 8 chips, else hosts of 2x2
      kwargs["chips_per_host_bounds"] = (2, 4, 1) if d == (2, 4) else (
          min(d[0], 2), min(d[1], 2), 1)
      kwargs["wrap"] = (d[0] >= 16, d[1] >= 16, False)
    if self.slices > 1:
      kwargs["num_slices"] = self.slices
    devices = topologies.get_topology_desc(self.topology_name, "tpu", **kwargs).devices
    if len(devices) != self.chips:
      raise ValueError(f"topology {self.topology_name} x {self.slices} slice(s) gave "
                       f"{len(devices)} devices, expected {self.chips}")
    return devices


def parse_topology(name: str, num_slices: int = 1) -> Target:
  """'v4-512' | 'v5litepod-16' | 'v5e-16' | 'v5p-128' | 'v4:2x2x4' -> Target (of
  `num_slices` such slices)."""
  if num_slices < 1:
    raise ValueError(f"--num_slices must be at least 1, got {num_slices}")
  raw = re.fullmatch(r"(v4|v5p|v5|v5e|v5litepod):(\d+(?:x\d+){1,2})", name)
  if raw:
    chip = CHIPS[_ALIASES[raw.group(1)]]
    dims = tuple(int(x) for x in raw.group(2).split("x"))
    if len(dims) != len(next(iter(chip.shapes.values())).split("x")):
      raise ValueError(f"{name}: {chip.generation} slices have "
                       f"{'3' if chip.shapes is _SHAPES_3D else '2'} dimensions")
    return Target(name, chip, dims, num_slices)
  m = re.fullmatch(r"(v4|v5p|v5e|v5litepod)-(\d+)", name)
  if not m:
    raise ValueError(f"unknown topology {name!r}: use a Cloud TPU accelerator name "
                     "(v4-8 ... v4-4096, v5litepod-1 ... v5litepod-256, v5p-8 ...) or a "
                     "libtpu topology name such as v4:2x2x4")
  chip = CHIPS[_ALIASES[m.group(1)]]
  n = int(m.group(2))
  chips, rest = divmod(n, chip.cores_per_chip)
  if rest or chips not in chip.shapes:
    sizes = ", ".join(f"{m.group(1)}-{c * chip.cores_per_chip}" for c in chip.shapes)
    raise ValueError(f"{name} is no standard slice (names count TensorCores, "
                     f"{chip.cores_per_chip} per chip); known: {sizes}; or give a shape "
                     f"such as {chip.generation}:{next(iter(chip.shapes.values()))}")
  return Target(name, chip, tuple(int(x) for x in chip.shapes[chips].split("x")), num_slices)


def have_libtpu() -> bool:
  """Whether the TPU compiler (the libtpu package) is installed."""
  try:
    from jax._src import xla_bridge
    return xla_bridge.get_tpu_library_path() is not None
  except Exception:  # noqa: BLE001  (a jax without the helper)
    return False


class DoesNotFit(Exception):
  """The step needs more HBM than a chip has; `report` says how much and names buffers."""

  def __init__(self, report: dict):
    super().__init__(report["error"])
    self.report = report


def traced_flops(jaxpr) -> float:
  """Matmul FLOPs (2 per multiply-add of every dot_general) of a jaxpr, on all devices.

  XLA's cost analysis counts a while loop's body once (the scan over layers, windowed
  collective matmuls) and a Pallas kernel as nothing; here a scan body counts `length`
  times, a shard_map body once per shard, a Pallas kernel once per grid step (dense: the
  blocks causal attention skips count too). The backward pass and remat's recomputation
  are part of the traced step, so they count."""
  from jax.extend import core
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
      free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += 2.0 * float(np.prod(lhs)) * float(np.prod(free))
      continue
    counts = []
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, core.ClosedJaxpr):
          counts.append(traced_flops(sub.jaxpr))
        elif isinstance(sub, core.Jaxpr):
          counts.append(traced_flops(sub))
    if not counts:
      continue
    inner = max(counts) if name == "cond" else sum(counts)
    if name == "scan":
      inner *= eqn.params["length"]
    elif name == "pallas_call":
      inner *= float(np.prod(eqn.params["grid_mapping"].grid))
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      inner *= float(np.prod([mesh.shape[a] for a in eqn.params["newly_manual_axes"]]))
    total += inner
  return total


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2,
                "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def largest_buffers(dump_dir: str | None, n: int = 6) -> list[dict]:
  """The n largest distinct arrays in the compiler's memory usage report of the train step
  (written by --xla_dump_to, also when the compile runs out of memory)."""
  reports = sorted(Path(dump_dir).glob("*train_step*memory-usage-report.txt")) if dump_dir else []
  if not reports:
    return []
  sizes = {}
  for shape in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", reports[-1].read_text()):
    dtype, dims = shape
    if dtype in _DTYPE_BYTES:
      nbytes = _DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d]))
      sizes[f"{dtype}[{dims}]"] = nbytes
  top = sorted(sizes.items(), key=lambda kv: -kv[1])[:n]
  return [{"shape": s, "gib": _gib(b)} for s, b in top]


def _oom(message: str) -> dict | None:
  """Required and available bytes from the TPU compiler's out-of-memory error, or None."""
  units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
  num = r"([\d.]+)([KMGT]?)i?B?"
  for pattern in (rf"required for HLO temporaries \({num}\) exceeds available HBM \({num}\)",
                  rf"Used {num} of {num} hbm"):
    m = re.search(pattern, message)
    if m:
      a, ua, b, ub = m.groups()
      return {"required": int(float(a) * units[ua]), "available": int(float(b) * units[ub])}
  if "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message:
    return {}
  return None


def compile_train_step(target: Target, dump_dir: str | None = None) -> dict:
  """Builds and compiles the train step under the parsed gin config; returns the report.

  Raises DoesNotFit (with the report) when the step needs more HBM than the compiler
  allows. `dump_dir`: where XLA_FLAGS --xla_dump_to writes (for the largest buffers)."""
  import gin
  import jax
  import jax.numpy as jnp

  from codegen2_jax import flops, gin_config, partitioning, trainer
  from codegen2_jax.data import converters
  from codegen2_jax.models import attention
  from codegen2_jax.models.codegen import ModelConfig, count_params

  settings = gin.get_bindings(trainer.train)
  batch_size, seq_len = settings["batch_size"], settings["seq_len"]
  cfg = ModelConfig()
  devices = target.devices()
  rules = partitioning.logical_axis_rules()
  try:  # a mesh or batch setting that does not fit the topology: one line, exit 2
    mesh = partitioning.make_mesh(devices=devices)
    trainer.check_batch_split(batch_size, mesh, rules)
  except ValueError as e:  # gin appends "In call to configurable ..." lines: keep the first
    raise gin_config.GinConfigError(str(e).strip().splitlines()[0]) from None
  t0 = time.time()
  model, _, state, _, step_fn = trainer.build_train_step(
      cfg, settings.get("seed", 0), settings["train_steps"], mesh, rules, abstract=True)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  keys = [*converters.CodeGenFeatureConverter.MODEL_FEATURES,
          *converters.CodeGenFeatureConverter.PACKING_FEATURE_DTYPES]
  batch = {k: jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=batch_sharding)
           for k in keys}
  n_params = count_params(model)
  kind = devices[0].device_kind
  usable = target.chip.usable_hbm_bytes
  report = {
      "topology": target.name, "libtpu_topology": target.topology_name, "device_kind": kind,
      "chips": len(devices), "slices": target.slices,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "params": n_params, "batch_size": batch_size, "seq_len": seq_len,
      "microbatches": gin.get_bindings("make_train_step").get("microbatches", 1),
      "dtype": cfg.dtype, "remat": cfg.remat,
      "hbm_gib": _gib(target.chip.hbm_bytes), "usable_hbm_gib": _gib(usable),
  }
  with partitioning.activation_sharding(mesh, rules):  # as in train(): trace-time constraints
    report["attention"] = attention.resolve_implementation(
        cfg.attention_impl, cfg.compute_dtype, cfg.attention == "prefix_lm", cfg.head_dim)
    traced = step_fn.trace(state, batch)
    lowered = traced.lower()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001  (a JaxRuntimeError; told apart by its text)
    oom = _oom(str(e))
    if oom is None:
      raise
    usable = oom.get("available", usable)
    report.update(fits=False, usable_hbm_gib=_gib(usable), total_gib=_gib(oom.get("required")),
                  compile_seconds=round(time.time() - t0, 1))
    over = f"{_gib(oom['required'] - usable)} GiB" if "required" in oom else "an unknown amount"
    report["over_by_gib"] = _gib(oom["required"] - usable) if "required" in oom else None
    report["largest_buffers"] = largest_buffers(dump_dir)
    report["compiler_message"] = str(e).splitlines()[0][:500]
    report["error"] = (f"does not fit: the train step needs {report['total_gib']} GiB per "
                       f"chip, {over} more than the {_gib(usable)} GiB the TPU compiler allows "
                       f"on a {kind} chip")
    raise DoesNotFit(report) from None
  compile_s = time.time() - t0

  mem = compiled.memory_analysis()
  sizes = {"arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
           "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
           "generated_code": mem.generated_code_size_in_bytes,
           "peak": getattr(mem, "peak_memory_in_bytes", 0) or 0}
  # The compiler's peak (live buffers at the worst point, arguments included) is what it
  # checks against the chip; without one, the sum of the parts (an upper bound).
  total = sizes["peak"] or (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                            + sizes["temporaries"] + sizes["generated_code"])
  sizes["total"] = total
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  compiler_seconds = float(cost.get("optimal_seconds", -1.0))
  peak = flops.peak_flops_per_device(device_kind=kind)
  model_flops = (flops.training_flops_per_token(cfg, n_params, seq_len) * batch_size * seq_len
                 / len(devices))
  executed = traced_flops(traced.jaxpr.jaxpr) / len(devices)
  report.update({
      "bytes_per_chip": sizes,
      "total_gib": _gib(total),
      "fits": total <= usable,
      "headroom_gib": _gib(usable - total),
      "flops_per_chip": {
          "compiler": float(cost.get("flops", 0.0)),  # XLA: loop bodies once (see traced_flops)
          "traced": executed,                          # every matmul the step runs
          "model": model_flops,                        # 6N + attention, as the training MFU
      },
      "compiler_seconds": compiler_seconds if compiler_seconds > 0 else None,
      "peak_flops_per_chip": peak,
  })
  # libtpu gives no time estimate for these programs (optimal_seconds < 0): the step time
  # is then that of the traced FLOPs at the chip's peak, a lower bound, so MFU an upper one.
  step_s = (compiler_seconds if compiler_seconds > 0 else executed / peak) if peak else None
  report["step_seconds_estimate"] = step_s
  report["step_seconds_from"] = ("compiler" if compiler_seconds > 0 else
                                 "traced FLOPs at peak (a lower bound: MFU an upper bound)")
  report["tokens_per_s_estimate"] = batch_size * seq_len / step_s if step_s else None
  report["mfu_estimate"] = model_flops / (peak * step_s) if step_s else None
  report["compile_seconds"] = round(compile_s, 1)
  if not report["fits"]:
    report["over_by_gib"] = _gib(total - usable)
    report["largest_buffers"] = largest_buffers(dump_dir)
    report["error"] = (f"does not fit: the train step needs {_gib(total)} GiB per chip, "
                       f"{_gib(total - usable)} GiB more than the {_gib(usable)} GiB the TPU "
                       f"compiler allows on a {kind} chip")
    raise DoesNotFit(report)
  return report


def _gib(n) -> float | None:
  return None if n is None else round(n / GIB, 2)


USAGE = ("usage: python -m codegen2_jax.aot --gin_file=F [--gin_file=...] --topology=v4-512 "
         "[--num_slices=N] [--gin.NAME=VALUE ...]")


def main(argv=None) -> int:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile for TPU; never start one here
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # Only compiles, never opens a TPU: don't wait on /tmp/libtpu_lockfile, which any jax
  # process that loaded libtpu (one without JAX_PLATFORMS=cpu) holds until it exits.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from codegen2_jax import gin_config
  argv = sys.argv[1:] if argv is None else argv
  if any(a in ("-h", "--help") for a in argv):
    print(__doc__.strip() + "\n\n" + gin_config.macros_help())
    return 0
  try:
    files, bindings, rest = gin_config.split_argv(argv)
  except gin_config.GinConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  topology, num_slices = None, "1"
  for a in rest:
    if a.startswith("--topology="):
      topology = a.split("=", 1)[1]
    elif a.startswith("--num_slices="):
      num_slices = a.split("=", 1)[1]
    else:
      print(f"unknown argument {a!r}; {USAGE}", file=sys.stderr)
      return 2
  if not files or not topology:
    print(f"--gin_file and --topology are required; {USAGE}", file=sys.stderr)
    return 2
  try:
    if not num_slices.isdigit():
      raise ValueError(f"--num_slices must be a whole number, got {num_slices!r}")
    target = parse_topology(topology, int(num_slices))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not have_libtpu():
    print("error: the TPU compiler (libtpu) is not installed: pip install -e '.[tpu]'",
          file=sys.stderr)
    return 2
  # The compiler's memory report names the largest buffers (read only when over).
  # XLA reads these flags once, so they only take effect in a fresh process.
  dump_dir = tempfile.mkdtemp(prefix="cg2_aot_")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir}"
                             " --xla_dump_hlo_module_re=train_step").strip()
  gin_files = ["gin/hardware/tpu.gin", *files]
  try:
    import tasks  # noqa: F401  (run files may bind task settings)
    from codegen2_jax import trainer  # noqa: F401  registers `train` with gin
    try:
      gin_config.parse(gin_files, bindings)
    except gin_config.GinConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    try:
      report, status = compile_train_step(target, dump_dir), 0
    except DoesNotFit as e:
      report, status = e.report, 1
    except gin_config.GinConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
  finally:
    shutil.rmtree(dump_dir, ignore_errors=True)
  report["gin_files"] = gin_files
  print(json.dumps(report, indent=1), flush=True)
  if status:
    names = ", ".join(f"{b['shape']} ({b['gib']} GiB)"
                      for b in report.get("largest_buffers", [])[:3])
    print(f"error: {report['error']}" + (f"; largest buffers: {names}" if names else ""),
          file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
