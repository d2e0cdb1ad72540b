"""seqio's offline cache on Apache Beam (DirectRunner): written through the data CLI into a
gs:// folder (the GCS protocol server of conftest), then trained from with the same
objective mix, passes counted; an empty split cached and read as empty; uncached tasks
refused. Reading a gs:// cache goes through TensorFlow's GCS client, which cannot reach the
test server (README, "cache"), so the tests read a local copy of what Beam wrote."""

import contextlib
import io
import json
import os
import shutil

import gin
import pytest

from codegen2_jax import storage, train
from codegen2_jax.data import __main__ as data_cli
from codegen2_jax.data import files, pipeline

MODULE = '''
from codegen2_jax.data import files, registry
registry.register_task("cache_tree", files.tree_source({root!r}, [".py"], "cached tree"))
registry.register_task("cache_empty", files.tree_source({empty!r}, [".py"], "no validation"))
registry.register_mixture("cache_both", [("cache_tree", 1.0), ("cache_empty", 1.0)])
registry.register_task("cache_old", files.tree_source({empty!r}, [".py"], "no validation"))
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


def _download(url, local):
  """Copies the gs:// folder `url` to `local`; returns the relative paths copied."""
  copied = []
  for file_url in storage.list_tree(url):
    rel = file_url[len(url) + 1:]
    (local / rel).parent.mkdir(parents=True, exist_ok=True)
    (local / rel).write_bytes(storage.path(file_url).read_bytes())
    copied.append(rel)
  return copied


@pytest.fixture(scope="module")
def cached(tmp_path_factory, vocab, gcs_emulator):
  """(module dir, local copy of the cache, cache CLI summary): both tasks cached once for
  the file, by one Beam run into gs://."""
  tmp = tmp_path_factory.mktemp("cache")
  _tree(tmp / "code")
  _tree(tmp / "empty", n_train=1, n_validation=0)
  (tmp / "cache_tasks_mod.py").write_text(MODULE.format(root=str(tmp / "code"),
                                                         empty=str(tmp / "empty")))
  mp = pytest.MonkeyPatch()
  mp.syspath_prepend(str(tmp))
  url = f"gs://test-bucket/cache-{os.getpid()}"
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    rc = data_cli.main(["cache", "--mixture=cache_both", "--module=cache_tasks_mod",
                        f"--out={url}", "--runner=DirectRunner", "--min_shards=2"])
  assert rc == 0
  summary = json.loads(buf.getvalue().strip().splitlines()[-1])
  out = tmp / "cache_dir"
  assert "cache_tree/COMPLETED" in _download(url, out)
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


def test_an_empty_split_is_cached_and_read_as_empty(cached, tmp_path, capsys):
  _, out, summary = cached
  # One file, held out of validation: the validation split has no document.
  assert summary["tasks"]["cache_empty"] == {"dir": f"{summary['out']}/cache_empty",
                                             "written": True, "train": 1, "validation": 0}
  info = json.loads((out / "cache_empty" / "info.validation.json").read_text())
  assert set(info["features"]) == set(
      json.loads((out / "cache_empty" / "info.train.json").read_text())["features"])
  try:
    with gin.unlock_config():
      gin.parse_config(["cache.reading.use_cached = True",
                        f"cache.reading.cache_dirs = ['{out}']"])
    # One pass over it reads as empty, and the train split is there.
    empty = pipeline.host_dataset("cache_empty", 128, 1, split="validation", num_epochs=1,
                                  shard_index=0, num_shards=1, pack=False)
    assert list(pipeline.batches(empty)) == []
    one = pipeline.host_dataset("cache_empty", 128, 1, num_epochs=1, shard_index=0,
                                num_shards=1, pack=False)
    assert len(list(pipeline.batches(one))) > 0
  finally:
    with gin.unlock_config():
      gin.clear_config()
  # Repeated (as training and eval read), it would never yield: one line naming the task
  # and split, read from the cache or not (it hung before).
  for cache_flags in (["--gin.USE_CACHED=True", f"--gin.CACHE_DIRS=['{out}']"], []):
    assert data_cli.main(["inspect", "--mixture=cache_empty", "--split=validation",
                          "--n=1", *cache_flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task 'cache_empty' has no document in its 'validation' split" \
        in err[0], err
  # A cache written before empty splits got their info (seqio's writer leaves `{}`).
  old = tmp_path / "old"
  shutil.copytree(out / "cache_empty", old / "cache_old")
  (old / "cache_old" / "info.validation.json").write_text("{}")
  assert data_cli.main(["inspect", "--mixture=cache_old", "--split=validation", "--n=1",
                        "--gin.USE_CACHED=True", f"--gin.CACHE_DIRS=['{old}']"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "'validation' split of task 'cache_old'" in err[0] \
      and "cache the task again" in err[0], err
