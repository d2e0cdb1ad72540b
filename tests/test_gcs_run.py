"""A training run whose model_dir is gs:// (the GCS emulator): killed and resumed with the
losses of a local run, TensorBoard and metrics.jsonl without duplicates, restore for
sample/eval from gs:// (without the user's task module), a bucket that does not exist."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codegen2_jax import checkpoints, gin_config, restore, storage, train, trainer

REPO = Path(__file__).resolve().parent.parent
TINY = ["--gin_file=gin/runs/test_tiny.gin", "--gin.train.show_samples_at_end=False",
        "--gin.train.eval_every=0"]  # 4 steps, checkpoints at 2 and 4


def losses(model_dir) -> dict[int, float]:
  """step -> loss from metrics.jsonl, local or gs:// (asserts each step is there once)."""
  text = storage.path(model_dir).joinpath("metrics.jsonl").read_text()
  steps = [json.loads(x) for x in text.splitlines()]
  steps = [r for r in steps if "loss" in r]
  assert len({r["step"] for r in steps}) == len(steps), text
  return {r["step"]: r["loss"] for r in steps}


def tensorboard_losses(logdir: Path) -> list[tuple[int, float]]:
  """[(step, loss)] as TensorBoard's loader shows them (restart purges applied)."""
  from tensorboard.backend.event_processing import plugin_event_accumulator as pea
  from tensorboard.util import tensor_util
  acc = pea.EventAccumulator(str(logdir))
  acc.Reload()
  return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss")]


def no_gs_folder(*dirs: Path) -> bool:
  return not any(list(d.glob("gs:*")) for d in dirs)


@pytest.fixture(scope="module")
def runs(gcs_emulator, vocab, tmp_path_factory):
  """A local 4-step run, and the same run into gs:// SIGKILLed after its step-2
  checkpoint and rerun to the end (both processes in a scratch cwd). Returns
  (local dir, gs:// url, scratch cwd, rerun's output)."""
  cwd = tmp_path_factory.mktemp("cwd")
  ref = tmp_path_factory.mktemp("ref") / "run"
  url = f"gs://test-bucket/gcs_run-{os.getpid()}-{time.time_ns()}"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")

  def cli(model_dir):
    return subprocess.Popen([sys.executable, "-m", "codegen2_jax.train", *TINY,
                             f"--model_dir={model_dir}"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

  p = cli(url)
  try:
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and \
        checkpoints.complete_steps(storage.join(url, "checkpoints")) == []:
      time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == -signal.SIGKILL, out  # killed, not finished
    kept = checkpoints.complete_steps(storage.join(url, "checkpoints"))
    assert kept == [2], kept
    p = cli(url)
    # Meanwhile the uninterrupted local run, in this process (no third interpreter start).
    saved = os.getcwd()
    os.chdir(cwd)
    try:
      assert train.main([*TINY, f"--model_dir={ref}"]) == 0
    finally:
      os.chdir(saved)
    out = p.communicate(timeout=600)[0]
  finally:
    if p.poll() is None:  # a failure above: leave no training process behind
      p.kill()
      p.wait()
  assert p.returncode == 0, out
  assert "steps 2..4" in out, out
  return ref, url, cwd, out


def test_a_gs_run_killed_and_rerun_logs_what_a_local_run_does(runs, tmp_path):
  ref, url, cwd, _ = runs
  want, got = losses(ref), losses(url)
  assert sorted(got) == [1, 2, 3, 4]
  for s in want:
    assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), s
  # TensorBoard's event files on gs://, read by TensorBoard's loader: each step once.
  logdir = storage.path(url) / "tensorboard"
  events = [p for p in logdir.iterdir() if "tfevents" in p.name]
  assert len(events) == 2  # one per process that trained
  for p in events:
    (tmp_path / p.name).write_bytes(p.read_bytes())
  tb = tensorboard_losses(tmp_path)
  assert [s for s, _ in tb] == [1, 2, 3, 4]
  assert all(v == pytest.approx(got[s], rel=1e-6) for s, v in tb)
  assert "train.mixture_or_task_name" in (storage.path(url) / "config.gin").read_text()
  assert checkpoints.complete_steps(storage.join(url, "checkpoints")) == [2, 4]
  assert no_gs_folder(cwd, REPO)


def test_restore_load_from_gs_gives_the_run_s_parameters(runs, tmp_path, monkeypatch):
  import jax
  ref, url, _, _ = runs
  monkeypatch.chdir(tmp_path)
  got, want = restore.load(url), restore.load(ref)
  assert got.step == want.step == 4
  assert str(got.run_dir) == url
  from flax import nnx
  a, b = nnx.state(got.model, nnx.Param), nnx.state(want.model, nnx.Param)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  text = "def add(a, b):\n    return a + b\n"
  assert got.vocab is not None and got.vocab.encode(text) == want.vocab.encode(text)
  assert no_gs_folder(tmp_path)


def test_restore_needs_no_task_module_named_in_config_gin(runs, capsys):
  _, url, _, _ = runs
  config = storage.path(url) / "config.gin"
  original = config.read_text()
  # What a run launched with `import my_tasks` in its gin file records.
  config.write_text("import no_such_tasks_module\n" + original +
                    "\nno_such_tasks_module.Filter.min_len = 5\n")
  try:
    capsys.readouterr()
    r = restore.load(url)
  finally:
    config.write_text(original)
  assert r.step == 4 and r.vocab is not None
  err = [x for x in capsys.readouterr().err.splitlines() if "no_such_tasks_module" in x]
  assert len(err) == 1 and err[0].startswith("warning: ") and "restoring without it" in err[0]
  # A config.gin that is broken otherwise is still an error.
  config.write_text(original + "\ntrain.no_such_parameter = 1\n")
  try:
    with pytest.raises(restore.RestoreError, match="no_such_parameter"):
      restore.load(url)
  finally:
    config.write_text(original)


def test_drop_missing_imports_keeps_every_import_that_works():
  text = ("from codegen2_jax.models import codegen\nfrom codegen2_jax import no_such_sub\n"
          "import os.path\nimport no_such_tasks_module as t\n"
          "from __gin__ import dynamic_registration\nX = 1\n")
  got, dropped = gin_config.drop_missing_imports(text)
  assert got.splitlines() == [
      "from codegen2_jax.models import codegen",
      "# from codegen2_jax import no_such_sub  (not importable here)",
      "import os.path",
      "# import no_such_tasks_module as t  (not importable here)",
      "from __gin__ import dynamic_registration", "X = 1"]
  assert [m for m, _ in dropped] == ["codegen2_jax.no_such_sub", "no_such_tasks_module"]
  assert "No module named 'no_such_tasks_module'" in dropped[1][1]


def test_a_bucket_that_does_not_exist_fails_in_one_line_before_compiling(
    gcs_emulator, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)

  def compiled(*args, **kwargs):
    raise AssertionError("the model was built before model_dir was checked")
  monkeypatch.setattr(trainer, "build_train_step", compiled)
  assert train.main([*TINY, "--model_dir=gs://no-such-bucket-h1/run"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("error: model_dir gs://no-such-bucket-h1/run is not writable"), err
  assert os.listdir(tmp_path) == []


def test_a_damaged_gs_checkpoint_is_set_aside_and_the_one_before_restores(
    gcs_dir, tmp_path, monkeypatch, capsys):
  import jax.numpy as jnp
  monkeypatch.chdir(tmp_path)
  d = storage.join(gcs_dir, "checkpoints")
  state = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(0)}
  manager = checkpoints.make_manager(d, async_save=False)
  for step in (2, 4):
    checkpoints.save(manager, step, {**state, "step": jnp.int32(step)}, {"batches": step})
  checkpoints.finish(manager)
  # A step whose save was cut off: on GCS orbax writes into the step's own folder and
  # adds commit_success.txt last, so the folder alone is no checkpoint.
  (storage.path(d) / "6" / "state" / "partial").write_text("")
  assert checkpoints.complete_steps(d) == [2, 4]
  # Truncate every object of step 4's state (what a bad copy leaves).
  for url, size in storage.list_tree(storage.join(d, "4", "state")).items():
    f = storage.path(url)
    f.write_bytes(f.read_bytes()[: size // 2])
  step, restored, position = checkpoints.restore(checkpoints.make_manager(d), state)
  assert step == 2 and position == {"batches": 2} and int(restored["step"]) == 2
  names = sorted(p.name for p in storage.path(d).iterdir())
  assert names[0] == "2" and names[1].startswith("4.corrupt-") and names[2] == "6", names
  assert checkpoints.complete_steps(d) == [2]
  # Readers (restore_params) skip a damaged step and leave it where it is.
  for url, size in storage.list_tree(storage.join(d, "2", "state")).items():
    f = storage.path(url)
    f.write_bytes(f.read_bytes()[: size // 2])
  with pytest.raises(FileNotFoundError, match="no checkpoint in gs://"):
    checkpoints.restore_params(d, state["params"])
  assert "checkpoints/2 does not restore" in capsys.readouterr().err
  assert (storage.path(d) / "2").is_dir()
  assert os.listdir(tmp_path) == []


def test_a_local_checkpoint_copied_to_gs_without_markers_is_explained(gcs_dir, tmp_path):
  # On GCS orbax trusts only steps holding commit_success.txt (it writes it last); a copy
  # without it (an upload cut short, a tool that drops it) is named, not just "none".
  import jax
  local = tmp_path / "checkpoints"
  manager = checkpoints.make_manager(local, async_save=False)
  params = {"w": np.arange(8, dtype=np.float32)}
  checkpoints.save(manager, 3, {"params": params}, {"batches": 3})
  checkpoints.finish(manager)
  for root, _, names in os.walk(local):
    for n in names:
      src = os.path.join(root, n)
      storage.path(src).copy(storage.join(gcs_dir, "checkpoints", os.path.relpath(src, local)))
  marker = storage.path(storage.join(gcs_dir, "checkpoints", "3", "commit_success.txt"))
  marker.unlink()
  abstract = {"w": jax.ShapeDtypeStruct((8,), np.float32)}
  with pytest.raises(FileNotFoundError, match="step folders 3 lack commit_success.txt"):
    checkpoints.restore_params(storage.join(gcs_dir, "checkpoints"), abstract)
  marker.write_text("")
  step, got = checkpoints.restore_params(storage.join(gcs_dir, "checkpoints"), abstract)
  assert step == 3 and np.array_equal(np.asarray(got["w"]), params["w"])
