"""Multislice meshes (partitioning.make_mesh with make_mesh.dcn_data): data parallel across
slices, FSDP within a slice. CPU devices have no slice_index, so two slices are simulated
by make_mesh.num_slices on 8 host devices; the compile-only devices of two TPU v4 slices
(libtpu) carry a real slice_index."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import jax
import pytest

from codegen2_jax import aot, partitioning, train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--gin_file=gin/runs/test_tiny.gin", "--gin.train.show_samples_at_end=False",
        "--gin.train.eval_every=0"]

# Prints where a two-slice mesh puts the batch rows and the FSDP-sharded parameters.
PLACEMENT = r"""
import json, sys
import jax
from flax import nnx
from codegen2_jax import gin_config, partitioning
from codegen2_jax.models.codegen import CodeGen, ModelConfig

platform = sys.argv[1]
gin_config.parse(["gin/hardware/fsdp.gin", "gin/hardware/multislice.gin"],
                 ["make_mesh.num_slices=2"] if platform == "cpu" else [])
devices = None
if platform == "tpu":
  from codegen2_jax import aot
  devices = aot.parse_topology("v4-8", num_slices=2).devices()
mesh = partitioning.make_mesh(devices=devices)
# The slice of each device: its slice_index (TPU), else the simulated one (ids 0-3, 4-7).
slice_of = {d.id: getattr(d, "slice_index", d.id // 4) for d in mesh.devices.flat}
rules = partitioning.DEFAULT_RULES
rows = {}
for d, idx in partitioning.batch_sharding(mesh, rules).devices_indices_map((8, 16)).items():
  rows.setdefault(slice_of[d.id], set()).update(range(8)[idx[0]])
cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, head_dim=16,
                  rotary_dim=8, d_ff=64, max_len=16)
params = nnx.state(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
shardings = partitioning.state_shardings(params, mesh, rules)
placement = {}
for (path, p), (_, s) in zip(jax.tree_util.tree_leaves_with_path(params),
                             jax.tree_util.tree_leaves_with_path(shardings)):
  shards = {}
  for d, idx in s.devices_indices_map(p.shape).items():
    shards.setdefault(slice_of[d.id], set()).add(str(idx))
  # Per slice: how many distinct pieces of the parameter its devices hold.
  placement[jax.tree_util.keystr(path)] = {
      "spec": str(s.spec), "same_in_every_slice": len({frozenset(v) for v in shards.values()}) == 1,
      "pieces_per_slice": sorted(len(v) for v in shards.values())}
print(json.dumps({
    "shape": {k: int(v) for k, v in mesh.shape.items()},
    "data_rows": [[slice_of[d.id] for d in row.flat] for row in mesh.devices],
    "batch_rows": {str(k): sorted(v) for k, v in rows.items()},
    "params": placement}))
"""


def placement(platform):
  env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  p = subprocess.run([sys.executable, "-c", PLACEMENT, platform], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def check_two_slices(r):
  assert r["shape"] == {"data": 2, "fsdp": 4, "tensor": 1}
  # 'data' (DCN) separates the slices; each FSDP group (one 'data' row) is one slice.
  assert r["data_rows"] == [[0, 0, 0, 0], [1, 1, 1, 1]]
  assert r["batch_rows"] == {"0": [0, 1, 2, 3], "1": [4, 5, 6, 7]}
  sharded = {k: v for k, v in r["params"].items() if "fsdp" in v["spec"]}
  assert sharded and len(sharded) < len(r["params"])  # some replicated (e.g. the norms)
  for name, v in r["params"].items():
    # Every slice holds the whole parameter; sharded ones in 4 pieces: FSDP within a slice.
    assert v["same_in_every_slice"], name
    assert v["pieces_per_slice"] == ([4, 4] if name in sharded else [1, 1]), name


def test_two_simulated_slices_split_data_across_them_and_fsdp_within():
  check_two_slices(placement("cpu"))


@pytest.mark.skipif(not aot.have_libtpu(), reason="libtpu (the TPU compiler) not installed")
def test_two_tpu_slices_by_slice_index():
  check_two_slices(placement("tpu"))


def test_dcn_data_must_match_the_number_of_slices():
  one = jax.devices()[:1]
  with pytest.raises(ValueError, match=r"make_mesh.dcn_data=2 must equal the number of "
                                       r"slices: 1 here \(these devices have no slice_index"):
    partitioning.make_mesh(devices=one, dcn_data=2)
  with pytest.raises(ValueError, match=r"make_mesh.num_slices=2: 1 devices do not split"):
    partitioning.make_mesh(devices=one, num_slices=2, dcn_data=2)
  # One slice: dcn_data 1 (default) or -1 gives the mesh of before.
  assert dict(partitioning.make_mesh(devices=one, dcn_data=-1).shape) == {
      "data": 1, "fsdp": 1, "tensor": 1}


def fake(i, slice_index=None):
  d = types.SimpleNamespace(id=i, process_index=0)
  if slice_index is not None:
    d.slice_index = slice_index
  return d


def test_slices_are_grouped_by_slice_index_else_split_in_order():
  devices = [fake(i, s) for i, s in enumerate([1, 0, 1, 0])]
  assert [[d.id for d in g] for g in partitioning._group_slices(devices, None)] == [
      [1, 3], [0, 2]]
  with pytest.raises(ValueError, match=r"num_slices=4, but the devices report 2 slice"):
    partitioning._group_slices(devices, 4)
  plain = [fake(i) for i in (3, 0, 2, 1)]
  assert [[d.id for d in g] for g in partitioning._group_slices(plain, 2)] == [[0, 1], [2, 3]]
  assert [d.id for d in partitioning._group_slices(plain, None)[0]] == [3, 0, 2, 1]
  with pytest.raises(ValueError, match="different device counts"):
    partitioning._group_slices([fake(0, 0), fake(1, 1), fake(2, 1)], None)


def test_train_names_a_dcn_setting_that_does_not_match(tmp_path, capsys):
  # Fails at the mesh, before the vocabulary or any compilation.
  assert train.main([*TINY, f"--model_dir={tmp_path}", "--gin.make_mesh.dcn_data=2"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: make_mesh.dcn_data=2 must equal the number of slices: 1")


# Three train steps (trainer.build_train_step, as train() builds it) on one slice of 8
# devices and on two simulated slices of 4; prints the losses and final parameters' digest.
TRAIN = r"""
import json
import gin
import jax
import jax.numpy as jnp
import numpy as np
from codegen2_jax import partitioning, trainer
from codegen2_jax.models.codegen import ModelConfig

gin.bind_parameter("learning_rate_schedule.peak", 1e-2)
gin.bind_parameter("learning_rate_schedule.warmup_steps", 1)
cfg = ModelConfig(vocab_size=128, d_model=32, n_layers=1, n_heads=4, head_dim=8,
                  rotary_dim=4, d_ff=64, max_len=32, attention_impl="xla")
rng = np.random.RandomState(0)
seg = np.repeat([[1] * 10 + [2] * 14 + [0] * 8], 8, 0)
batch = {"inputs": rng.randint(3, 128, (8, 32)), "targets": rng.randint(3, 128, (8, 32)),
         "segment_ids": seg, "positions": np.tile(np.arange(32), (8, 1)),
         "prefix": np.zeros((8, 32), int), "objective": np.ones((8, 32), int),
         "loss_weights": (seg > 0).astype(int)}
rules = partitioning.DEFAULT_RULES
out = {}
for name, mesh in [("one", partitioning.make_mesh(data=1, fsdp=-1)),
                   ("two", partitioning.make_mesh(data=1, fsdp=-1, dcn_data=2, num_slices=2))]:
  _, _, state, _, step_fn = trainer.build_train_step(cfg, 0, 10, mesh, rules)
  placed = {k: jax.device_put(jnp.asarray(v, jnp.int32), partitioning.batch_sharding(mesh, rules))
            for k, v in batch.items()}
  losses = []
  with partitioning.activation_sharding(mesh, rules):
    for _ in range(3):
      state, m = step_fn(state, placed)
      losses.append(float(m["loss"]))
  params = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
  out[name] = {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "losses": losses,
               "params": params}
diff = max(float(np.abs(a - b).max()) for a, b in zip(out["one"]["params"], out["two"]["params"]))
moved = max(float(np.abs(a).max()) for a in out["one"]["params"])
print(json.dumps({k: {"mesh": v["mesh"], "losses": v["losses"]} for k, v in out.items()}
                 | {"max_param_diff": diff, "max_param": moved}))
"""


def test_train_steps_on_two_simulated_slices_match_one_slice():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  p = subprocess.run([sys.executable, "-c", TRAIN], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(p.stdout.strip().splitlines()[-1])
  assert r["one"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert r["two"]["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  one, two = r["one"]["losses"], r["two"]["losses"]
  assert one[2] < one[0] - 0.05  # the steps train (lr 1e-2), so equal losses mean something
  assert two == pytest.approx(one, rel=2e-5)
  assert r["max_param_diff"] < 1e-5
