"""seqio's offline cache on Apache Beam (DirectRunner): written through the data CLI, then
trained from with the same objective mix, passes counted; uncached tasks refused."""

import contextlib
import io
import json
import os

import pytest

from codegen2_jax import train
from codegen2_jax.data import __main__ as data_cli
from codegen2_jax.data import files

MODULE = '''
from codegen2_jax.data import files, registry
registry.register_task("cache_tree", files.tree_source({root!r}, [".py"], "cached tree"))
'''


def _tree(root, n_train=4, n_validation=1):
  """Python files, `n_validation` of them in the validation split (by content CRC)."""
  root.mkdir()
  kept = {False: 0, True: 0}
  want = {False: n_train, True: n_validation}
  i = 0
  while kept[False] < n_train or kept[True] < n_validation:
    text = "".join(f"def f{i}_{j}(x, y):\n    '''Return x * {j} + y.'''\n    return x * {j} + y\n\n"
                   for j in range(12))
    held = files.held_out(text, 50)
    if kept[held] < want[held]:
      (root / f"m{i}.py").write_text(text)
      kept[held] += 1
    i += 1


@pytest.fixture(scope="module")
def cached(tmp_path_factory, vocab):
  """(module dir, cache dir, cache CLI summary): the task cached once for the file."""
  tmp = tmp_path_factory.mktemp("cache")
  _tree(tmp / "code")
  (tmp / "cache_tasks_mod.py").write_text(MODULE.format(root=str(tmp / "code")))
  mp = pytest.MonkeyPatch()
  mp.syspath_prepend(str(tmp))
  out = tmp / "cache_dir"
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = data_cli.main(["cache", "--mixture=cache_tree", "--module=cache_tasks_mod",
                        f"--out={out}", "--runner=DirectRunner", "--min_shards=2"])
  assert rc == 0
  summary = json.loads(buf.getvalue().strip().splitlines()[-1])
  yield tmp, out, summary
  mp.undo()


def _span_share_trained(run):
  """Span corruption's share of the loss tokens a run logged (metrics.jsonl)."""
  totals = {"span_corruption": 0.0, "causal_lm": 0.0}
  for line in (run / "metrics.jsonl").read_text().splitlines():
    m = json.loads(line)
    for k in totals:
      totals[k] += m.get(f"tokens/{k}", 0.0)
  return totals["span_corruption"] / sum(totals.values())


def _span_share_uncached(steps):
  """The same share over the first `steps` batches the uncached pipeline gives training
  (the same rows, batch and seed as the trained run)."""
  import numpy as np

  import gin

  from codegen2_jax.data import pipeline
  from codegen2_jax.data.objective_ids import OBJECTIVE_NAMES
  with gin.unlock_config():
    gin.clear_config()  # USE_CACHED=False, the default
  ds = pipeline.host_dataset("cache_tree", 128, 8, seed=0, shard_index=0, num_shards=1)
  tokens = np.zeros(len(OBJECTIVE_NAMES))
  for batch in pipeline.batches(ds.take(steps)):
    np.add.at(tokens, batch["objective"], batch["loss_weights"])
  span, causal = (tokens[OBJECTIVE_NAMES.index(k)] for k in ("span_corruption", "causal_lm"))
  return span / (span + causal)


def test_cache_cli_writes_the_task_and_training_reads_it(cached, capsys):
  tmp, out, summary = cached
  task = summary["tasks"]["cache_tree"]
  # Documents only (no pass markers): 4 train files, 1 validation file.
  assert task["written"] and task["train"] == 4 and task["validation"] == 1
  assert (out / "cache_tree" / "COMPLETED").exists()
  assert json.loads((out / "cache_tree" / "codegen2_vocabulary.json").read_text())["sha256"]

  # Training reads the cache: hide the source tree, so nothing could read it.
  os.rename(tmp / "code", tmp / "code_hidden")
  steps = 20  # 20 x 8 rows of 128 tokens: ~170 sequences, each drawing its objective
  try:
    assert train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={tmp / 'run'}",
                       "--gin.MIXTURE_OR_TASK_NAME='cache_tree'", f"--gin.TRAIN_STEPS={steps}",
                       "--gin.BATCH_SIZE=8", "--gin.LOG_EVERY=5",
                       f"--gin.CHECKPOINT_EVERY={steps}", f"--gin.train.eval_every={steps}",
                       "--gin.train.show_samples_at_end=False", "--gin.USE_CACHED=True",
                       f"--gin.CACHE_DIRS=['{out}']"]) == 0
  finally:
    os.rename(tmp / "code_hidden", tmp / "code")
  # Passes are counted on cached data (a tiny task: many passes fill the shuffle buffer).
  assert "data: cache_tree reached epoch" in capsys.readouterr().out
  metrics = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
  assert max(m.get("epoch/cache_tree", 0) for m in metrics) > 1
  assert any("eval/loss" in m for m in metrics)  # the validation split, from the cache
  # The objectives run online after the cache: the same mix as the uncached pipeline's.
  cached_share, uncached_share = _span_share_trained(tmp / "run"), _span_share_uncached(steps)
  assert 0.25 < uncached_share < 0.75
  assert abs(cached_share - uncached_share) < 0.15, (cached_share, uncached_share)


def test_inspect_reads_the_cache(cached, capsys):
  _, out, _ = cached
  assert data_cli.main(["inspect", "--mixture=cache_tree", "--n=6", "--json", "--seq_len=256",
                        "--gin.USE_CACHED=True", f"--gin.CACHE_DIRS=['{out}']"]) == 0
  lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
  assert len(lines) == 6
  assert {ex["objective"] for ex in lines} <= {"causal_lm", "span_corruption"}
  assert all(ex["source"].endswith(".py") and ex["epoch"] >= 1 for ex in lines)


def test_uncached_mixture_is_one_line_naming_the_task_and_the_command(tmp_path, vocab,
                                                                      capsys):
  empty = tmp_path / "no_cache"
  empty.mkdir()
  rc = train.main(["--gin_file=gin/runs/test_tiny.gin", f"--model_dir={tmp_path / 'run'}",
                   "--gin.USE_CACHED=True", f"--gin.CACHE_DIRS=['{empty}']"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc != 0 and len(err) == 1, err
  assert "'stdlib_code' of 'stdlib_demo' is not cached" in err[0]
  assert f"python -m codegen2_jax.data cache --mixture=stdlib_demo --out={empty}" in err[0]
  # The data tools too; and USE_CACHED without CACHE_DIRS.
  assert data_cli.main(["bench", "--mixture=stdlib_demo", "--gin.USE_CACHED=True"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "CACHE_DIRS" in err[0], err
