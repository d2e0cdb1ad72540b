"""AOT compile of the train step for a TPU topology on this CPU machine (codegen2_jax.aot).

The compile tests need the TPU compiler (libtpu, `pip install -e '.[tpu]'`) and skip
without it; the topology names and the FLOP counter are checked everywhere."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from codegen2_jax import aot

REPO = Path(__file__).resolve().parent.parent
needs_libtpu = pytest.mark.skipif(
    not aot.have_libtpu(),
    reason="libtpu (the TPU compiler) is not installed; pip install -e '.[tpu]' to run the "
           "AOT compile tests")


def run_aot(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  p = subprocess.run([sys.executable, "-m", "codegen2_jax.aot", *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=timeout)
  return p.returncode, p.stdout, p.stderr


@pytest.mark.parametrize("name,chips,dims,hbm", [
    ("v4-8", 4, (2, 2, 1), 32), ("v4-512", 256, (4, 8, 8), 32),
    ("v4-4096", 2048, (8, 16, 16), 32), ("v5litepod-16", 16, (4, 4), 16),
    ("v5e-256", 256, (16, 16), 16), ("v5p-128", 64, (4, 4, 4), 95),
    ("v4:2x2x4", 16, (2, 2, 4), 32)])
def test_accelerator_names_map_to_slices(name, chips, dims, hbm):
  t = aot.parse_topology(name)
  assert (t.chips, t.dims, t.chip.hbm_bytes) == (chips, dims, hbm * aot.GIB)


@pytest.mark.parametrize("name", ["v4-6", "v4-7", "v3-8", "v5litepod-3", "tpu"])
def test_unknown_topologies_are_refused(name):
  with pytest.raises(ValueError, match="topology|slice"):
    aot.parse_topology(name)


def test_traced_flops_count_every_scan_iteration():
  w = jnp.ones((8, 16, 32))

  def f(x):
    return jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi[:, :16]), None), x, w)[0]

  jaxpr = jax.make_jaxpr(f)(jnp.ones((4, 16))).jaxpr
  assert aot.traced_flops(jaxpr) == 8 * 2 * 4 * 16 * 16


def test_usage_errors_exit_2():
  assert aot.main(["--gin_file=gin/runs/test_tiny.gin"]) == 2  # no --topology
  assert aot.main(["--gin_file=gin/runs/test_tiny.gin", "--topology=v9-8"]) == 2
  for bad in ("0", "two"):
    assert aot.main(["--gin_file=gin/runs/test_tiny.gin", "--topology=v4-8",
                     f"--num_slices={bad}"]) == 2


def test_num_slices_multiply_the_chips():
  t = aot.parse_topology("v4-32", num_slices=2)
  assert (t.dims, t.slices, t.chips) == ((2, 2, 4), 2, 32)


@needs_libtpu
def test_tiny_config_compiles_for_a_v4_slice_and_reports_memory():
  # head_dim 128 and 512 tokens: TPU attention is splash, run per shard (shard_map).
  rc, out, err = run_aot("--gin_file=gin/runs/test_tiny.gin", "--topology=v4-8",
                         "--gin.ModelConfig.head_dim=128", "--gin.ModelConfig.n_heads=2",
                         "--gin.SEQ_LEN=512")
  assert rc == 0, err[-3000:]
  r = json.loads(out)
  assert r["attention"] == "splash"
  assert (r["device_kind"], r["chips"], r["mesh"]) == (
      "TPU v4", 4, {"data": 1, "fsdp": 4, "tensor": 1})
  assert r["fits"] is True and r["hbm_gib"] == 32.0
  b = r["bytes_per_chip"]
  assert 0 < b["arguments"] and 0 < b["total"] < r["usable_hbm_gib"] * aot.GIB
  assert set(b) >= {"arguments", "outputs", "temporaries", "total"}
  # FSDP shards the parameters AND the optimizer moments: each chip holds about a quarter
  # of the 12 bytes per parameter of the train state (4 chips), not all of it.
  assert b["arguments"] < 0.5 * 12 * r["params"]
  assert r["flops_per_chip"]["traced"] > 0 and 0 < r["mfu_estimate"] <= 1


@needs_libtpu
def test_a_config_far_too_large_does_not_fit_and_exits_nonzero():
  rc, out, err = run_aot("--gin_file=gin/runs/test_tiny.gin", "--topology=v4-8",
                         "--gin.SEQ_LEN=2048", "--gin.BATCH_SIZE=4096")
  assert rc == 1, err[-3000:]
  r = json.loads(out)
  assert r["fits"] is False and r["over_by_gib"] > 10
  assert "does not fit" in err and f"{r['over_by_gib']} GiB more" in err
  assert r["largest_buffers"] and "largest buffers: " in err


@needs_libtpu
def test_tiny_config_compiles_for_two_v4_slices():
  # Multislice: data parallel over the two slices (DCN), FSDP over each slice's 4 chips.
  args = ["--gin_file=gin/runs/test_tiny.gin", "--topology=v4-8", "--num_slices=2",
          "--gin.ModelConfig.head_dim=128", "--gin.ModelConfig.n_heads=2", "--gin.SEQ_LEN=512",
          "--gin.BATCH_SIZE=8"]
  # Without the multislice gin, the mesh setting does not match the devices: one line.
  rc, out, err = run_aot(*args)
  assert rc == 2 and err.strip().splitlines()[-1] == (
      "error: make_mesh.dcn_data=1 must equal the number of slices: 2 here (by the devices' "
      "slice_index)")
  rc, out, err = run_aot(*args, "--gin_file=gin/hardware/multislice.gin")
  assert rc == 0, err[-3000:]
  r = json.loads(out)
  assert (r["chips"], r["slices"], r["mesh"]) == (8, 2, {"data": 2, "fsdp": 4, "tensor": 1})
  assert r["fits"] is True and r["attention"] == "splash"
  # Each chip holds a quarter of the train state (FSDP over a slice), not an eighth.
  assert 0.2 * 12 * r["params"] < r["bytes_per_chip"]["arguments"] < 0.3 * 12 * r["params"]
