"""Multi-epoch sampling with the epoch counted (lesson 5), and the long-document log line."""

import collections

import gin
import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import epochs, files, objectives, pipeline, registry

LENGTHS = {"targets": 256, "loss_weights": 256, "prefix": 256, "objective": 256,
           "epoch": 256, "task": 256}


def _tree_task(tmp_path, name, n_files=6):
  root = tmp_path / name
  root.mkdir()
  for i in range(n_files):
    (root / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
  src = files.tree_source(root, [".py"], name)
  # The split is by content (a moved file stays in its split), not by path.
  train = [p for p in src.files() if not files.held_out(open(p).read(), 50)]
  registry.register_task(name, src, objective=objectives.single_objective("causal_lm"))
  return sorted(train)


def _per_epoch_sources(ds):
  """{epoch: [source, ...]} of a task dataset's examples; checks the tags are uniform."""
  out = collections.defaultdict(list)
  for ex in ds.as_numpy_iterator():
    assert len(set(ex["epoch"].tolist())) == 1 and len(set(ex["task"].tolist())) == 1
    out[int(ex["epoch"][0])].append(ex["source"].decode())
  return out


def test_every_pass_is_numbered_and_sees_each_document_once(tmp_path, vocab):
  train = _tree_task(tmp_path, "epochs_tree")
  task = seqio.get_mixture_or_task("epochs_tree")
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=3)
  seen = _per_epoch_sources(ds)
  assert sorted(seen) == [1, 2, 3]
  for e in (1, 2, 3):
    assert sorted(seen[e]) == train
  ex = next(ds.as_numpy_iterator())
  assert int(ex["task"][0]) == epochs.task_id("epochs_tree") > 0
  # One pass (as evaluation reads): a single epoch, the marker never shows as an example.
  val = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1)
  assert sorted(_per_epoch_sources(val)) == [1]


def test_two_hosts_count_their_own_passes_over_disjoint_shards(vocab):
  # One-shard source (like the stdlib tasks): the wrapper shards by example per host, and
  # each host's shard still ends with its own marker.
  docs = [f"doc {i} " * 5 for i in range(7)]
  src = seqio.FunctionDataSource(
      lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
          {"source": [f"d{i}" for i in range(7)], "text": docs}), splits=("train",))
  registry.register_task("epochs_fn", src, objective=objectives.single_objective("causal_lm"))
  task = seqio.get_mixture_or_task("epochs_fn")
  union = []
  for index in (0, 1):
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=2,
                          shard_info=seqio.ShardInfo(index, 2))
    seen = _per_epoch_sources(ds)
    assert sorted(seen) == [1, 2] and sorted(seen[1]) == sorted(seen[2])
    union += seen[1]
  assert sorted(union) == [f"d{i}" for i in range(7)]


def test_packed_batches_report_the_mean_epoch_per_task(tmp_path, vocab):
  _tree_task(tmp_path, "epochs_small", n_files=3)
  _tree_task(tmp_path, "epochs_big", n_files=12)
  registry.register_mixture("epochs_mix", [("epochs_small", 1.0), ("epochs_big", 1.0)])
  # Packing reorders examples within a window (data.packing): the default window of 1024
  # tiny examples spans about 11 passes of the big task, so its first batches would not
  # show the passes in order. A window of 16 keeps the claim about progress testable.
  with gin.unlock_config():
    gin.bind_parameter("packing.pack_dataset.window", 16)
  try:
    ds = pipeline.host_dataset("epochs_mix", 64, 4, seed=0, shuffle=False, num_shards=1,
                               shard_index=0)
  finally:
    gin.clear_config()
  tracker = epochs.EpochTracker()
  batches = pipeline.batches(ds, tracker=tracker)
  first = next(batches)
  assert "epoch" not in first and "task" not in first and "inputs" in first
  m1 = tracker.metrics()
  assert set(m1) == {"epoch/epochs_small", "epoch/epochs_big"}
  for _ in range(30):
    next(batches)
  m2 = tracker.metrics()
  # The same rate over 3 files vs 12: the small task goes round about 4x as often.
  assert m2["epoch/epochs_small"] > m2["epoch/epochs_big"] >= m1["epoch/epochs_big"]
  assert tracker.highest["epochs_small"] > tracker.highest["epochs_big"] >= 1
  assert any(line.startswith("data: epochs_small reached epoch") for line in tracker.news())
  assert tracker.news() == []


def test_split_documents_counts_long_documents_in_a_log_line(capfd):
  objectives.LONG_DOCUMENTS.reset()  # the count is process-wide (once per run)
  ds = tf.data.Dataset.from_tensor_slices(
      {"targets": tf.ragged.constant([list(range(1, 251)), [5, 6]] * 10),
       "source": ["a", "b"] * 10})
  out = list(objectives.split_documents(ds, {"targets": 100}, reserve=10).as_numpy_iterator())
  assert len(out) == 40
  err = capfd.readouterr().err
  assert "split_documents: 1 documents so far were longer than 90 tokens" in err
  assert "10 documents so far were longer than 90 tokens (a row less room for objective " \
         "markup) and were split into 30 pieces (none trimmed)" in err


def test_tracker_ignores_padding_and_unknown_ids():
  tracker = epochs.EpochTracker(names={7: "seven"})
  batch = {"inputs": np.zeros((1, 6)), "epoch": np.array([[1, 1, 2, 3, 3, 0]]),
           "task": np.array([[7, 7, 7, 9, 9, 0]])}
  tracker.observe(batch)
  assert set(batch) == {"inputs"}
  m = tracker.metrics()
  assert np.isclose(m["epoch/seven"], 4 / 3) and m["epoch/task_9"] == 3.0
