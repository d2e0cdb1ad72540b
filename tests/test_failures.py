"""Failure paths: damaged checkpoints (set aside in training, skipped by readers), another
model shape, a full disk, SIGTERM, metrics of a resumed run, bad settings, --help."""

import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from codegen2_jax import checkpoints, metrics, restore, sample, train

REPO = Path(__file__).resolve().parent.parent
TINY = ["--gin_file=gin/runs/test_tiny.gin", "--gin.train.show_samples_at_end=False",
        "--gin.train.eval_every=0"]


def records(model_dir):
  return [json.loads(x) for x in (Path(model_dir) / "metrics.jsonl").read_text().splitlines()]


def corrupt(step_dir):
  """Truncates every file of a step's state item (what a crash mid-copy leaves)."""
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def tensorboard_losses(model_dir):
  """[(step, loss)] as TensorBoard's loader shows them (restart purges applied)."""
  import tensorflow as tf
  from tensorboard.backend.event_processing import plugin_event_accumulator as pea
  acc = pea.EventAccumulator(str(Path(model_dir) / "tensorboard"))
  acc.Reload()
  return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss")]


@pytest.fixture(scope="module")
def run4(tmp_path_factory, vocab):
  """A 4-step tiny run with checkpoints at steps 2 and 4 (tests copy it before changing it)."""
  d = tmp_path_factory.mktemp("run4") / "run"
  assert train.main([*TINY, f"--model_dir={d}"]) == 0
  assert checkpoints.complete_steps(d / "checkpoints") == [2, 4]
  return d


def test_corrupt_checkpoint_is_set_aside_retrained_and_skipped_by_readers(
    run4, tmp_path, capsys, caplog):
  d = tmp_path / "run"
  shutil.copytree(run4, d)
  corrupt(d / "checkpoints" / "4")
  capsys.readouterr()
  assert train.main([*TINY, f"--model_dir={d}", "--gin.TRAIN_STEPS=6"]) == 0
  assert "steps 2..6" in capsys.readouterr().out
  assert "checkpoints/4 does not restore" in caplog.text and "moved it aside" in caplog.text
  aside = [p.name for p in (d / "checkpoints").iterdir() if not p.name.isdigit()]
  assert len(aside) == 1 and re.fullmatch(r"4\.corrupt-\d{8}T\d{6}", aside[0])
  # The retrained step 4 was saved again (orbax skips a step whose folder exists).
  assert checkpoints.complete_steps(d / "checkpoints") == [2, 4, 6]

  # The resumed run re-ran steps 3 and 4: one record each, the re-run's, in both logs.
  losses = {r["step"]: r["loss"] for r in records(d) if "loss" in r}
  assert [r["step"] for r in records(d) if "loss" in r] == [1, 2, 3, 4, 5, 6]
  tb = tensorboard_losses(d)
  assert [s for s, _ in tb] == [1, 2, 3, 4, 5, 6]
  assert all(v == pytest.approx(losses[s]) for s, v in tb)

  # Readers (sample, eval, convert: restore.load) skip a damaged step, leaving it in place.
  corrupt(d / "checkpoints" / "6")
  assert sample.main([f"--checkpoint_dir={d}", "--prompt_ids=2,10", "--max_new_tokens=2",
                      "--print_ids"]) == 0
  err = capsys.readouterr().err
  assert re.search(r"checkpoints/6 does not restore \(.*\); trying step 4", err), err
  assert (d / "checkpoints" / "6").is_dir()
  assert restore.load(d).step == 4
  from codegen2_jax.eval import __main__ as eval_cli
  assert eval_cli.main(["perplexity", f"--checkpoint_dir={d}", "--task=stdlib_code",
                        "--max_documents=2", "--batch_size=1"]) == 0
  out, err = capsys.readouterr()
  assert json.loads(out)["checkpoint_step"] == 4 and "checkpoints/6 does not restore" in err
  from codegen2_jax import convert
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={d}",
                       f"--out_dir={tmp_path / 'hf'}"]) == 0
  assert "checkpoints/6 does not restore" in capsys.readouterr().err
  assert (tmp_path / "hf" / "model.safetensors").is_file()
  # An explicit step that does not restore is an error, not a fallback.
  with pytest.raises(restore.RestoreError, match="checkpoints/6 does not restore"):
    restore.load(d, step=6)


def test_another_model_shape_is_named_not_called_corrupt(run4, capsys):
  before = sorted(p.name for p in (run4 / "checkpoints").iterdir())
  assert train.main([*TINY, f"--model_dir={run4}", "--gin.ModelConfig.n_layers=3",
                     "--gin.TRAIN_STEPS=6"]) == 2
  err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
  assert len(err) == 1
  assert re.search(r"parameter params/blocks/\S+ has shape \[2, .*\] there but \[3, .*\] in "
                   r"this config", err[0]), err[0]
  assert sorted(p.name for p in (run4 / "checkpoints").iterdir()) == before  # nothing moved
  assert sample.main([f"--checkpoint_dir={run4}", "--gin.ModelConfig.n_layers=3",
                      "--prompt_ids=1"]) == 2
  assert "has shape [2," in capsys.readouterr().err


def test_sigterm_saves_before_the_periodic_evaluation(tmp_path, vocab, capsys, monkeypatch):
  write = metrics.MetricsWriter.write

  def write_then_sigterm(self, step, m, steps_per_s=None):
    write(self, step, m, steps_per_s)
    if step == 3:  # as if the scheduler preempted us during step 3
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(metrics.MetricsWriter, "write", write_then_sigterm)
  handler = signal.getsignal(signal.SIGTERM)
  d = tmp_path / "run"
  assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={d}",
                     "--gin.TRAIN_STEPS=50", "--gin.CHECKPOINT_EVERY=1000",
                     "--gin.train.eval_every=1", "--gin.train.eval_batches=1"]) == 0
  out = capsys.readouterr().out
  assert checkpoints.complete_steps(d / "checkpoints") == [3]
  assert [r["step"] for r in records(d) if "eval/loss" in r] == [1, 2]
  assert re.search(r"eval +2/50.*step +3/50.*preempted: saved step 3", out, re.S), out
  assert not re.search(r"eval +3/50", out)
  assert "=== completion" not in out
  assert signal.getsignal(signal.SIGTERM) == handler  # the loop's handler is gone


def test_disk_full_stops_with_one_line_naming_the_cause(tmp_path, vocab, capfd):
  mnt = tmp_path / "small"
  mnt.mkdir()
  # 24 MB: room for the run's files and its first checkpoint (about 17 MB: 9 MB of train
  # state, 8 MB of data state), not the second.
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)],
                     capture_output=True, text=True)
  if r.returncode:
    pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {r.stderr.strip()}")
  try:
    code = train.main([*TINY, f"--model_dir={mnt / 'run'}"])
    err = capfd.readouterr().err
    good = checkpoints.complete_steps(mnt / "run" / "checkpoints")
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)
  assert code == 1, err
  lines = [x for x in err.splitlines() if x.startswith("error:")]
  assert len(lines) == 1, err
  assert "No space left on device" in lines[0] and "disk full" in lines[0]
  assert f"the last good checkpoint is step {good[-1]}" in lines[0] and good == [2]
  assert len(err.splitlines()) < 15, err  # the cause is not buried in tracebacks


def test_save_error_finds_the_os_error_under_orbax_wrappers(tmp_path):
  import errno

  class FakeManager:
    directory = tmp_path
  (tmp_path / "2").mkdir()
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device", "/x/4/state/d/abc")
    except OSError as e:
      raise ExceptionGroup("commit failed", [RuntimeError("async task failed")]) from e
  except ExceptionGroup as wrapped:
    err = checkpoints._save_error(FakeManager(), 4, RuntimeError("save failed"))
    assert "RuntimeError: save failed" in str(err)
    err = checkpoints._save_error(FakeManager(), 4, wrapped)
  assert str(err).startswith(f"saving step 4 to {tmp_path} failed: OSError: [Errno 28] No "
                             "space left on device")
  assert str(err).endswith("the last good checkpoint is step 2")
  assert "\n" not in str(err)


@pytest.mark.parametrize("binding,message", [
    ("--gin.BATCH_SIZE='eight'", "BATCH_SIZE must be an int, got 'eight' (str)"),
    ("--gin.BATCH_SIZE=4.5", "BATCH_SIZE must be an int, got 4.5 (float)"),
    ("--gin.BATCH_SIZE=-4", "BATCH_SIZE must be positive, got -4"),
    ("--gin.TRAIN_STEPS=0", "TRAIN_STEPS must be at least 1, got 0"),
    ("--gin.CHECKPOINT_EVERY=0", "CHECKPOINT_EVERY must be positive, got 0"),
    ("--gin.LOG_EVERY=0", "LOG_EVERY must be positive, got 0"),
    ("--gin.train.eval_every=-1", "train.eval_every must be >= 0, got -1"),
])
def test_bad_setting_fails_in_one_line_before_any_work(tmp_path, capsys, binding, message):
  d = tmp_path / "run"
  assert train.main([*TINY, f"--model_dir={d}", binding]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
  assert not d.exists()


def test_model_dir_must_be_a_writable_directory(tmp_path, capsys):
  f = tmp_path / "a_file"
  f.write_text("not a directory")
  assert train.main([*TINY, f"--model_dir={f}"]) == 2
  assert f"error: model_dir {f} is a file, not a directory" in capsys.readouterr().err
  assert train.main([*TINY, f"--model_dir={f / 'run'}"]) == 2
  assert f"error: model_dir {f / 'run'} is not writable" in capsys.readouterr().err
  ro = tmp_path / "ro"
  ro.mkdir()
  # A read-only filesystem (root ignores file modes, so chmod would prove nothing).
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                    capture_output=True).returncode:
    return  # not root: the two cases above still ran
  try:
    assert train.main([*TINY, f"--model_dir={ro / 'run'}"]) == 2
    assert "is not writable: Read-only file system" in capsys.readouterr().err
  finally:
    subprocess.run(["umount", "-l", str(ro)], check=False)


def test_batch_must_divide_over_the_data_parallel_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  p = subprocess.run([sys.executable, "-m", "codegen2_jax.train", *TINY,
                      f"--model_dir={tmp_path / 'run'}", "--gin_file=gin/hardware/dp.gin",
                      "--gin.BATCH_SIZE=4"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 2, p.stderr
  assert ("error: BATCH_SIZE 4 does not divide over the 8 data-parallel devices"
          in p.stderr), p.stderr
  # TensorFlow's CUDA probing on this GPU-less machine stays out of the output.
  assert "cuInit" not in p.stderr and "cuda drivers" not in p.stderr, p.stderr


def test_throughput_leaves_evaluation_time_out(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
  clock = metrics.Throughput()
  now[0] += 10.0     # 2 s of training and 8 s of evaluation
  clock.exclude(8.0)
  assert clock.tick(tokens=1000, steps=4) == (500.0, 2.0)
  now[0] += 1.0
  assert clock.tick(tokens=1000, steps=1) == (1000.0, 1.0)


@pytest.mark.parametrize("module", ["train", "sample", "eval.__main__", "convert", "aot",
                                    "data.__main__", "lessons"])
def test_help_prints_usage_and_the_main_macros(module, capsys, monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  mod = importlib.import_module(f"codegen2_jax.{module}")
  try:
    code = mod.main(["--help"])
  except SystemExit as e:
    code = e.code
  assert code in (0, None)
  out = capsys.readouterr().out
  assert "python -m codegen2_jax." + module.split(".")[0] in out
  assert "TRAIN_STEPS" in out and "BATCH_SIZE" in out and "--gin." in out


def test_eval_perplexity_on_data_missing_a_column_exits_in_one_line(run4, tmp_path):
  # `eval perplexity` reads through pipeline.numpy_iterator, so a source error ends the
  # process with its one line (reading with as_numpy_iterator could hang it at exit).
  import pyarrow as pa
  import pyarrow.parquet as pq
  root = tmp_path / "stack"
  (root / "python").mkdir(parents=True)
  for i in range(3):
    pq.write_table(pa.table({"text": [f"def f{j}(): pass\n" for j in range(50)]}),
                   root / "python" / f"d{i}.parquet")
  env = dict(os.environ, JAX_PLATFORMS="cpu", CODEGEN2_STACK_DIR=str(root))
  p = subprocess.run([sys.executable, "-m", "codegen2_jax.eval", "perplexity",
                      f"--checkpoint_dir={run4}", "--task=stack_python"], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=300)
  want = f"error: {root / 'python' / 'd0.parquet'} has no column 'content' (columns: ['text'])"
  assert p.returncode == 1 and p.stderr.strip().splitlines()[-1] == want, p.stderr[-2000:]
  assert "Traceback" not in p.stderr and not p.stdout, p.stderr[-2000:]


def test_a_vocabulary_larger_than_the_model_is_one_line(tmp_path, capsys):
  # stack_python tokenizes with CodeGen2's 51,200 ids; the tiny model has 8,192 rows.
  assert train.main([*TINY, f"--model_dir={tmp_path / 'run'}",
                     "--gin.MIXTURE_OR_TASK_NAME='stack_python'"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0] == ("error: the vocabulary has 51200 pieces but ModelConfig.vocab_size is "
                     "8192; set ModelConfig.vocab_size >= 51200"), err
