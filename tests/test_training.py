"""Training loop: accumulation, non-finite losses, preemption, exact resume, mesh presets
on 8 simulated devices, restore onto another device count (damaged checkpoints and other
failures: test_failures.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from codegen2_jax import checkpoints, optim, train
from codegen2_jax import train_step as ts
from codegen2_jax.models.codegen import CodeGen, ModelConfig

REPO = Path(__file__).resolve().parent.parent
TINY = ["--gin_file=gin/runs/test_tiny.gin", "--gin.train.show_samples_at_end=False",
        "--gin.train.eval_every=0"]


def losses(model_dir):
  """step -> loss from metrics.jsonl (a later line for the same step wins)."""
  out = {}
  for line in (Path(model_dir) / "metrics.jsonl").read_text().splitlines():
    r = json.loads(line)
    if "loss" in r:
      out[r["step"]] = r["loss"]
  return out


def run_cli(model_dir, *extra, devices=1, wait=True, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  cmd = [sys.executable, "-m", "codegen2_jax.train", *TINY, f"--model_dir={model_dir}", *extra]
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
  if not wait:
    return p
  out, _ = p.communicate(timeout=timeout)
  return p.returncode, out


def test_microbatches_equal_one_full_batch():
  cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, head_dim=8,
                    rotary_dim=4, d_ff=64, max_len=32)
  graphdef, params = nnx.split(CodeGen(cfg, nnx.Rngs(0)), nnx.Param)
  rng = np.random.RandomState(0)
  seg = np.repeat([[1] * 10 + [2] * 14 + [0] * 8], 8, 0)
  seg[3, 20:] = 0
  batch = {"inputs": rng.randint(3, 97, (8, 32)), "targets": rng.randint(3, 97, (8, 32)),
           "segment_ids": seg, "positions": np.tile(np.arange(32), (8, 1)),
           "prefix": np.zeros((8, 32), int), "objective": np.ones((8, 32), int),
           "loss_weights": (seg > 0).astype(int)}
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  schedule = optim.learning_rate_schedule(peak=1e-2, warmup_steps=1, total_steps=10)
  tx = optim.make_optimizer(schedule)
  results = []
  for k in (1, 4):
    step = jax.jit(ts.make_train_step(graphdef, tx, schedule, microbatches=k))
    state, m = step(ts.init_state(params, tx), batch)
    results.append((state, m))
  (s1, m1), (s4, m4) = results
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_nonfinite_loss_stops_naming_the_step_or_is_skipped(tmp_path, vocab, capsys):
  assert train.main([*TINY, f"--model_dir={tmp_path / 'a'}", "--gin.loss_fn.z_loss=1e39"]) == 1
  assert "non-finite loss or gradient at step 1 " in capsys.readouterr().err
  assert train.main([*TINY, f"--model_dir={tmp_path / 'b'}", "--gin.loss_fn.z_loss=1e39",
                     "--gin.make_train_step.skip_nonfinite=True"]) == 0
  recs = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  assert [r for r in recs if "loss" in r][-1]["skipped_steps"] == 4


def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path, vocab):
  d = tmp_path / "run"
  p = run_cli(d, "--gin.TRAIN_STEPS=100000", "--gin.CHECKPOINT_EVERY=100000", wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and not (d / "metrics.jsonl").exists():
    time.sleep(0.5)
  time.sleep(2)
  p.send_signal(signal.SIGTERM)
  out, _ = p.communicate(timeout=120)
  assert p.returncode == 0, out
  steps = [int(x.name) for x in (d / "checkpoints").iterdir() if x.name.isdigit()]
  assert len(steps) == 1 and steps[0] >= 1
  assert steps[0] == max(losses(d)) or steps[0] >= max(losses(d))


def test_exact_resume_after_sigkill(tmp_path, vocab):
  ref = tmp_path / "ref"
  code, out = run_cli(ref, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_EVERY=4")
  assert code == 0, out
  d = tmp_path / "killed"
  p = run_cli(d, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_EVERY=4", wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and not (d / "checkpoints" / "4").is_dir():
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.communicate(timeout=60)
  assert (d / "checkpoints" / "4").is_dir()
  code, out = run_cli(d, "--gin.TRAIN_STEPS=8", "--gin.CHECKPOINT_EVERY=4")
  assert code == 0, out
  assert "steps 4..8" in out
  # The data continues from the iterator state saved with step 4: no batch is replayed.
  assert "data: resumed at batch 4 from the saved state" in out and "replaying" not in out
  # A clean console: no TensorFlow CUDA probing on this GPU-less machine, no AutoGraph.
  assert "cuInit" not in out and "cuda drivers" not in out and "AutoGraph" not in out, out
  want, got = losses(ref), losses(d)
  for s in range(5, 9):
    assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), s


def test_async_save_keeps_the_data_position_of_its_step(tmp_path):
  # The train loop advances the position dict right after an async save returns; the
  # checkpoint must hold the value at save time (a later one resumes on the wrong batch).
  manager = checkpoints.make_manager(tmp_path / "ckpt", async_save=True)
  state = {"w": jnp.arange(1 << 16, dtype=jnp.float32)}
  position = {"batches": 4}
  checkpoints.save(manager, 4, state, position)
  position["batches"] = 5
  manager.wait_until_finished()
  _, _, restored = checkpoints.restore(manager, state)
  manager.close()
  assert restored == {"batches": 4}


PRESETS = ("dp", "fsdp", "fsdp_tp")
MESH_RUN = ["--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=3"]


@pytest.fixture(scope="module")
def one_device_losses(tmp_path_factory, vocab):
  d = tmp_path_factory.mktemp("one")
  code, out = run_cli(d, *MESH_RUN)
  assert code == 0, out
  return losses(d)


# One 8-device process trains every preset through the CLI's main (as
# `python -m codegen2_jax.train` does), then restores the FSDP checkpoint sharded over the
# 8 devices and dumps its parameters: one process start and one data pipeline warm-up
# instead of four.
PRESETS_SCRIPT = """
import sys
import numpy as np, jax
from flax import nnx
from codegen2_jax import checkpoints, gin_config, partitioning, train
from codegen2_jax.models.codegen import CodeGen, ModelConfig
root, presets, argv = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
assert jax.device_count() == 8
for preset in presets:
  code = train.main([*argv, f"--gin_file=gin/hardware/{preset}.gin", f"--model_dir={root}/{preset}"])
  assert code == 0, (preset, code)
run_dir = f"{root}/fsdp"
gin_config.parse([f"{run_dir}/config.gin"], [])
cfg = ModelConfig()
mesh = partitioning.make_mesh(data=1, fsdp=-1, tensor=1)
abstract = nnx.state(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
sh = partitioning.state_shardings(abstract, mesh, partitioning.DEFAULT_RULES)
abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sh)
_, params = checkpoints.restore_params(f"{run_dir}/checkpoints", abstract)
leaves = jax.tree.leaves(params)
assert any(len(x.sharding.device_set) == 8 for x in leaves)
np.savez(f"{run_dir}/params8.npz", *[np.asarray(x) for x in leaves])
"""


@pytest.fixture(scope="module")
def preset_runs(tmp_path_factory, vocab):
  """{preset: run dir} of the presets trained on 8 simulated devices, in one process."""
  root = tmp_path_factory.mktemp("presets")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", PRESETS_SCRIPT, str(root), ",".join(PRESETS),
                      *TINY, *MESH_RUN], cwd=REPO, env=env, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True, timeout=1500)
  assert r.returncode == 0, r.stdout[-5000:]
  return {p: root / p for p in PRESETS}


@pytest.mark.timeout(1800)  # the first one's setup trains all three (one process each before)
@pytest.mark.parametrize("preset", PRESETS)
def test_mesh_presets_on_8_devices_match_one_device(preset, preset_runs, one_device_losses):
  d = preset_runs[preset]
  got = losses(d)
  assert max(got) == max(one_device_losses) == 3
  for s, want in one_device_losses.items():
    assert got[s] == pytest.approx(want, rel=2e-5), (preset, s)
  if preset == "fsdp":
    _check_restore_on_one_device(d)


def _check_restore_on_one_device(run_dir):
  """The FSDP checkpoint restores here on 1 device with the params the 8-device process
  restored sharded (preset_runs dumped them to params8.npz)."""
  from codegen2_jax import checkpoints, gin_config
  gin_config.parse([str(run_dir / "config.gin")], [])
  cfg = ModelConfig()
  abstract = nnx.state(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(run_dir / "checkpoints", abstract)
  want = np.load(run_dir / "params8.npz")
  leaves = jax.tree.leaves(params)
  assert len(leaves) == len(want.files)
  for i, x in enumerate(leaves):
    assert len(x.sharding.device_set) == 1
    np.testing.assert_array_equal(np.asarray(x), want[f"arr_{i}"])


def test_two_processes_train_save_and_resume(tmp_path, vocab):
  """jax.distributed over loopback, 2 CPU devices per process, FSDP over all 4."""
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  d = tmp_path / "run"

  def launch(steps, port):
    procs = []
    for i in range(2):
      env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                 XLA_FLAGS="--xla_force_host_platform_device_count=2")
      cmd = [sys.executable, "-m", "codegen2_jax.train", *TINY, f"--model_dir={d}",
             "--gin_file=gin/hardware/fsdp.gin", "--gin.BATCH_SIZE=8",
             f"--gin.TRAIN_STEPS={steps}", f"--coordinator_address=127.0.0.1:{port}",
             "--num_processes=2", f"--process_id={i}"]
      procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    return outs

  outs = launch(6, port)
  for i, out in enumerate(outs):
    assert f"process {i}: reading data shard {i} of 2, 4 rows per step" in out
  steps = d / "checkpoints"
  assert sorted(int(p.name) for p in steps.iterdir() if p.name.isdigit()) == [2, 4, 6]
  want = losses(d)
  (steps / "6").rename(steps / "6.set-aside")  # resume from step 4, as after a preemption
  outs = launch(6, port + 1)
  for i, out in enumerate(outs):
    assert "steps 4..6" in out
    assert f"process {i}: data: resumed at batch 4 from the saved state" in out, out
  got = losses(d)
  assert max(got) == 6
  for s in (5, 6):  # each process restored its own shard's position
    assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), s
