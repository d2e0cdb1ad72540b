"""Registering a new task and mixture from a user's own module, as the README shows."""

import json
import textwrap
from pathlib import Path

from codegen2_jax import train
from codegen2_jax.data import __main__ as data_cli

USER_MODULE = '''
import seqio
from codegen2_jax.data import files, objectives, registry

registry.register_task(
    "user_rust", files.tree_source({root!r}, [".rs"], "my rust code"),
    objective=objectives.objective_mixture)   # probabilities set from gin
registry.register_mixture("user_mix", [("user_rust", 1.0), ("stdlib_code", 1.0)])
'''


def _write_user_module(tmp_path):
  code = tmp_path / "code"
  code.mkdir()
  for i in range(12):
    (code / f"m{i}.rs").write_text(f"fn f{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n" * 5)
  (tmp_path / "user_tasks_mod.py").write_text(USER_MODULE.format(root=str(code)))


def test_user_module_imported_from_gin_trains_by_name(tmp_path, monkeypatch, vocab, capsys):
  _write_user_module(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  (tmp_path / "user.gin").write_text(textwrap.dedent("""
      import user_tasks_mod
      train.eval_every = 0   # 12 tiny files hold no validation split
      objectives.objective_mixture.probabilities = (('causal_lm', 0.5), ('prefix_lm', 0.5))
  """))
  run = tmp_path / "run"
  assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--gin_file={tmp_path / 'user.gin'}",
                     f"--model_dir={run}", "--gin.MIXTURE_OR_TASK_NAME='user_mix'",
                     "--gin.TRAIN_STEPS=2", "--gin.train.show_samples_at_end=False"]) == 0
  assert "training user_mix" in capsys.readouterr().out
  assert "MIXTURE_OR_TASK_NAME = 'user_mix'" in (run / "config.gin").read_text()


def test_data_inspect_shows_the_user_task(tmp_path, monkeypatch, vocab, capsys):
  _write_user_module(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  assert data_cli.main(["inspect", "--mixture=user_rust", "--module=user_tasks_mod", "--n=4",
                        "--json", "--seq_len=128",
                        "--gin.objectives.objective_mixture.probabilities="
                        "(('prefix_lm', 1.0),)"]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
  assert len(lines) == 4
  for ex in lines:
    assert ex["objective"] == "prefix_lm" and ex["prefix_tokens"] > 0
    # A piece of one of the user's files (at 128 tokens a file is split; its last piece
    # may hold no `fn`), then the end of the document.
    assert ex["source"].endswith(".rs") and ex["text"].endswith("<|endoftext|>")
    piece = ex["text"].removesuffix("<|endoftext|>")
    assert piece and piece in Path(ex["source"]).read_text()


def test_data_cli_unknown_mixture(capsys):
  assert data_cli.main(["inspect", "--mixture=stdlib_dmeo"]) == 2
  assert "did you mean 'stdlib_demo'" in capsys.readouterr().err


def test_data_bench_and_prepare_vocab(tmp_path, vocab, capsys):
  assert data_cli.main(["bench", "--mixture=stdlib_demo", "--seconds=2", "--seq_len=512"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["packed_tokens_per_s"] > 0 and 0 < out["fill"] <= 1
  assert data_cli.main(["prepare-vocab", "--mixture=stdlib_prose", "--vocab_size=1000",
                        f"--out={tmp_path / 'v.model'}", "--max_chars=2000000"]) == 0
  from codegen2_jax.data.vocab import CodeGenVocabulary
  v = CodeGenVocabulary(tmp_path / "v.model")
  assert v.vocab_size == 1000 and v.decode(v.encode("Hello,\tworld  ")) == "Hello,\tworld  "
