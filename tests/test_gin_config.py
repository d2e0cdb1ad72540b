"""gin command lines: overrides, misspelt bindings fail early with a clear message."""

import pytest

from codegen2_jax import gin_config, train


def test_split_argv():
  files, bindings, rest = gin_config.split_argv(
      ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TRAIN_STEPS=5", "--model_dir=x"])
  assert files == ["a.gin", "b.gin"]
  assert bindings == ["TRAIN_STEPS = 5"]
  assert rest == ["--model_dir=x"]


def test_override_applies():
  import tasks  # noqa: F401
  from codegen2_jax import trainer  # noqa: F401
  gin_config.parse(["gin/runs/demo_cpu.gin"], ["TRAIN_STEPS = 7", "SEQ_LEN = 64"])
  assert gin_config.macro("TRAIN_STEPS") == 7
  for name in gin_config.STANDARD_MACROS:
    gin_config.macro(name)  # every standard macro is defined by the run file


@pytest.mark.parametrize("binding,needle", [
    ("--gin.TRAIN_STEP=5", "did you mean 'TRAIN_STEPS'"),
    ("--gin.BATCHSIZE=5", "`BATCHSIZE`"),
    ("--gin.make_optimizer.wieght_decay=0.0", "did you mean 'weight_decay'"),
    ("--gin.trian.seed=3", "did you mean 'train'"),
])
def test_misspelt_binding_fails_before_any_work(tmp_path, capsys, binding, needle):
  model_dir = tmp_path / "run"
  code = train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={model_dir}", binding])
  assert code == 2
  assert needle in capsys.readouterr().err
  assert not model_dir.exists()


def test_missing_gin_file(tmp_path, capsys):
  assert train.main(["--gin_file=gin/runs/nope.gin", f"--model_dir={tmp_path}"]) == 2
  assert "nope.gin" in capsys.readouterr().err
