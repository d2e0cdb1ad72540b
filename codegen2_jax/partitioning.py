"""Device mesh and logical-axis sharding rules.

Logical axes (fixed vocabulary): batch, length, embed, heads, kv, mlp, vocab, layers.
The rules map each to a mesh axis of ('data', 'fsdp', 'tensor') or None (replicated).
Default rules (FSDP + tensor parallel; on one device every axis has size 1):

    batch  -> (data, fsdp)     activations and input batches
    embed  -> fsdp             weights are sharded ZeRO-3 style over fsdp
    heads  -> tensor           attention heads split for tensor parallelism
    mlp    -> tensor
    vocab  -> tensor
    kv, length, layers -> replicated

Over several slices (multislice), 'data' spans the slices (DCN) and 'fsdp' / 'tensor' stay
within each slice: see make_mesh.
"""

from __future__ import annotations

import contextlib
import threading

import gin
import jax
import numpy as np
from flax import linen as nn
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "layers")

DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


@gin.configurable
def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None, *,
              dcn_data: int = 1, num_slices: int | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh over all devices, over one slice or several.

  `data`, `fsdp`, `tensor`: sizes within one slice (one may be -1: the rest of the slice).
  On one slice the devices are laid out in their listed order, as always.

  Multislice (MaxText's layout): with the devices of S slices (TPU slices joined over the
  data-center network, DCN), the mesh's 'data' axis is `dcn_data` x `data`, slice-major:
  each slice holds a whole copy of the (FSDP-sharded) parameters, so FSDP's all-gathers and
  tensor parallelism stay on a slice's ICI and the slices only sum gradients (and metrics)
  over DCN. `dcn_data` must equal S (-1: S). Within a slice, `jax.experimental.mesh_utils` orders the devices
  along the physical torus, as `create_hybrid_device_mesh` does.

  S comes from the devices' `slice_index` (TPU). `num_slices` is for devices without one
  (CPU, GPU): it splits the devices, by process then id, into that many equal groups
  treated as slices (GPU nodes over their network; simulated slices in tests). Where the
  devices report a `slice_index`, a `num_slices` that disagrees with it is an error.
  """
  devices = list(jax.devices() if devices is None else devices)
  slices = _group_slices(devices, num_slices)
  if dcn_data == -1:
    dcn_data = len(slices)
  if dcn_data != len(slices):
    where = ("by the devices' slice_index" if hasattr(devices[0], "slice_index") else
             f"make_mesh.num_slices={num_slices}" if num_slices else
             "these devices have no slice_index: make_mesh.num_slices simulates slices")
    raise ValueError(f"make_mesh.dcn_data={dcn_data} must equal the number of slices: "
                     f"{len(slices)} here ({where})")
  per_slice = len(slices[0])
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise ValueError(f"make_mesh: at most one of data/fsdp/tensor may be -1, got {shape}")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if per_slice % known:
      raise ValueError(f"make_mesh: {per_slice} devices{_per_slice(slices)} do not divide "
                       f"by {known}")
    shape[shape.index(-1)] = per_slice // known
  if int(np.prod(shape)) != per_slice:
    raise ValueError(f"mesh data={shape[0]} fsdp={shape[1]} tensor={shape[2]} needs "
                     f"{int(np.prod(shape))} devices{_per_slice(slices)}; {per_slice} are "
                     "present")
  if len(slices) == 1:
    return Mesh(np.array(devices).reshape(shape), MESH_AXES)
  # One block of shape (data, fsdp, tensor) per slice, stacked along 'data': the layout of
  # mesh_utils.create_hybrid_device_mesh(shape, (S, 1, 1)), here also for injected slices.
  blocks = [mesh_utils.create_device_mesh(shape, group, allow_split_physical_axes=True)
            for group in slices]
  return Mesh(np.concatenate(blocks, axis=0), MESH_AXES)


def _per_slice(slices) -> str:
  return f" per slice ({len(slices)} slices)" if len(slices) > 1 else ""


def _group_slices(devices: list, num_slices: int | None) -> list[list]:
  """The devices grouped into slices: by `slice_index` where devices have one (TPU), else
  `num_slices` equal groups in (process, id) order (one group when unset)."""
  if hasattr(devices[0], "slice_index"):
    groups = {}
    for d in devices:
      groups.setdefault(d.slice_index, []).append(d)
    slices = [groups[k] for k in sorted(groups)]
    if num_slices is not None and num_slices != len(slices):
      raise ValueError(f"make_mesh.num_slices={num_slices}, but the devices report "
                       f"{len(slices)} slice(s) by their slice_index; leave num_slices unset "
                       "on TPU (it is for devices without a slice_index)")
  else:
    n = 1 if num_slices is None else num_slices
    if n < 1 or len(devices) % n:
      raise ValueError(f"make_mesh.num_slices={num_slices}: {len(devices)} devices do not "
                       "split into that many equal slices")
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id)) if n > 1 else devices
    size = len(devices) // n
    slices = [ordered[i * size:(i + 1) * size] for i in range(n)]
  if len({len(s) for s in slices}) > 1:
    raise ValueError("make_mesh: the slices have different device counts "
                     f"{[len(s) for s in slices]}; multislice needs equal slices")
  return slices


@gin.configurable
def logical_axis_rules(rules=DEFAULT_RULES) -> tuple:
  """The logical -> mesh axis rules (a gin setting); validates the names."""
  for logical, mesh_axes in rules:
    if logical not in LOGICAL_AXES:
      raise ValueError(f"unknown logical axis {logical!r} in rules; known: {LOGICAL_AXES}")
    for a in (mesh_axes if isinstance(mesh_axes, (tuple, list)) else (mesh_axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"unknown mesh axis {a!r} in rules; known: {MESH_AXES}")
  return tuple(rules)


def logical_to_sharding(logical: P | tuple, mesh: Mesh, rules) -> NamedSharding:
  """Logical PartitionSpec -> NamedSharding on `mesh` under `rules`."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(logical), rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules):
  """NamedShardings for every variable of an nnx State (same tree structure)."""
  specs = nnx.get_partition_spec(state)
  return jax.tree.map(lambda s: logical_to_sharding(s, mesh, rules), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of [batch, length] input arrays."""
  return logical_to_sharding(("batch", "length"), mesh, rules)


_ACTIVE = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """Within this context (at trace time), `constrain` pins activations to the mesh."""
  previous = getattr(_ACTIVE, "value", None)
  _ACTIVE.value = (mesh, rules)
  try:
    yield
  finally:
    _ACTIVE.value = previous


def active_platform() -> str:
  """The platform a step is traced for: that of the active mesh's devices (the AOT compile
  traces for a TPU mesh on a CPU host), else jax's default backend."""
  active = getattr(_ACTIVE, "value", None)
  return active[0].devices.flat[0].platform if active else jax.default_backend()


def shard_map_logical(fn, in_axes: tuple, out_axes: tuple, whole: tuple = ()):
  """`fn` run per shard on the active mesh (see activation_sharding), its arguments and
  result split by logical axis names (one tuple per argument); `fn` itself outside that
  context. For kernels XLA cannot partition (Pallas/Mosaic). `whole`: logical axes `fn`
  needs unsplit (an error names the rule that splits one)."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return fn
  mesh, rules = active
  for logical, mesh_axes in rules:
    if logical in whole and mesh_axes and any(
        mesh.shape[a] > 1 for a in (mesh_axes if isinstance(mesh_axes, (tuple, list))
                                    else (mesh_axes,))):
      raise ValueError(f"{getattr(fn, '__name__', fn)} needs the whole {logical!r} axis on "
                       f"each device, but the rules split it over {mesh_axes!r}")
  spec = lambda axes: nn.logical_to_mesh_axes(tuple(axes), rules)  # noqa: E731
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec(a) for a in in_axes),
                       out_specs=spec(out_axes), check_vma=False)


def constrain(x: jax.Array, logical_axes: tuple[str, ...]) -> jax.Array:
  """with_sharding_constraint by logical axis names; a no-op outside activation_sharding."""
  active = getattr(_ACTIVE, "value", None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, logical_to_sharding(logical_axes, mesh, rules))
