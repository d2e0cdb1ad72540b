"""Packing: segments, positions, autoregressive inputs, no token lost or duplicated, full
rows on real data, and a packed pipeline that a tf.data checkpoint restores."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf

from codegen2_jax.data import converters, packing
from codegen2_jax.data import vocab as V

_FEATURES = ("targets", "loss_weights", "prefix", "objective")


def _examples(lengths, seed=0):
  rng = np.random.RandomState(seed)
  out = []
  for n in lengths:
    t = rng.randint(10, 1000, size=n).astype(np.int32)
    out.append({"targets": t, "loss_weights": np.ones(n, np.int32),
                "prefix": np.zeros(n, np.int32), "objective": np.full(n, 1, np.int32)})
  return out


def _ds(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})


def test_packed_rows_literal_example():
  exs = [{"targets": np.array([7, 8, 2], np.int32)},
         {"targets": np.array([5, 6, 9, 2], np.int32)}]
  for e in exs:
    n = len(e["targets"])
    e.update(loss_weights=np.ones(n, np.int32), prefix=np.zeros(n, np.int32),
             objective=np.zeros(n, np.int32))
  conv = converters.CodeGenFeatureConverter(pack=True)
  row = next(conv(_ds(exs), converters.task_feature_lengths(8)).as_numpy_iterator())
  assert row["inputs"].tolist() == [2, 7, 8, 2, 5, 6, 9, 0]
  assert row["targets"].tolist() == [7, 8, 2, 5, 6, 9, 2, 0]
  assert row["segment_ids"].tolist() == [1, 1, 1, 2, 2, 2, 2, 0]
  assert row["positions"].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
  assert row["loss_weights"].tolist() == [1] * 7 + [0]


def _segments(rows, bos_id=V.EOS_ID):
  """Every segment of `rows` as a dict of its features (numpy), checking on the way that
  it is contiguous, numbered 1..k in its row, its positions restart at 0, its inputs are
  its targets shifted right after `bos_id`, and padding is 0 in every feature."""
  out = []
  for row in rows:
    seg = row["segment_ids"]
    assert sorted(set(seg[seg > 0].tolist())) == list(range(1, seg.max() + 1))
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      assert (np.diff(idx) == 1).all()                   # a segment is contiguous
      assert row["positions"][idx].tolist() == list(range(len(idx)))
      assert row["inputs"][idx[0]] == bos_id
      assert row["inputs"][idx[1:]].tolist() == row["targets"][idx[:-1]].tolist()
      out.append({k: row[k][idx] for k in row if k not in ("segment_ids", "positions",
                                                          "inputs")})
    for k, v in row.items():
      assert (v[seg == 0] == 0).all(), k
  return out


def _key(ex):
  return tuple(tuple(ex[k].tolist()) for k in sorted(ex))


def _assert_same_examples(rows, examples):
  """Rows hold each example once, whole, with all its features (in any order)."""
  got = sorted(_key(s) for s in _segments(rows))
  want = sorted(_key({k: np.asarray(v) for k, v in e.items()}) for e in examples)
  assert got == want


def _fill(rows, seq_len):
  return sum(int((r["segment_ids"] > 0).sum()) for r in rows) / (len(rows) * seq_len)


def test_best_fit_decreasing_module_example():
  # packing's docstring example: best fit makes 2 full rows where next-fit makes 3.
  exs = [{"targets": np.array(v, np.int32)} for v in ([1] * 5, [2] * 4, [3] * 3, [4] * 4)]
  rows = list(packing.pack_dataset(_ds(exs), ["targets"], 8).as_numpy_iterator())
  assert [r["targets"].tolist() for r in rows] == [[1, 1, 1, 1, 1, 3, 3, 3],
                                                  [2, 2, 2, 2, 4, 4, 4, 4]]
  assert [r["segment_ids"].tolist() for r in rows] == [[1] * 5 + [2] * 3, [1] * 4 + [2] * 4]
  assert [r["positions"].tolist() for r in rows] == [[0, 1, 2, 3, 4, 0, 1, 2],
                                                    [0, 1, 2, 3, 0, 1, 2, 3]]


def test_packing_loses_and_duplicates_nothing():
  rng = np.random.RandomState(1)
  exs = _examples(rng.randint(1, 65, size=300).tolist())
  for e in exs:  # zeros inside features, and features that differ per token
    n = len(e["targets"])
    e["loss_weights"] = rng.randint(0, 2, size=n).astype(np.int32)
    e["prefix"] = (np.arange(n) < rng.randint(0, n + 1)).astype(np.int32)
    e["objective"][:] = rng.randint(0, 5)
    e["targets"][rng.rand(n) < 0.1] = 0
  conv = converters.CodeGenFeatureConverter(pack=True)
  rows = list(conv(_ds(exs), converters.task_feature_lengths(64)).as_numpy_iterator())
  _assert_same_examples(rows, exs)
  # Several windows: the same examples, and rows still (nearly) full.
  small = list(packing.pack_dataset(_ds(exs), _FEATURES, 64, window=37).as_numpy_iterator())
  assert sorted(_key({k: r[k][r["segment_ids"] == s] for k in _FEATURES})
                for r in small for s in range(1, r["segment_ids"].max() + 1)) == sorted(
      _key({k: e[k] for k in _FEATURES}) for e in exs)
  total = sum(len(e["targets"]) for e in exs)
  assert len(rows) <= -(-total // 64) + 1  # one window: about as few rows as tokens need
  assert len(small) <= -(-total // 64) + 300 // 37 + 1


def test_packing_is_deterministic_and_keeps_window_order_inside_rows():
  exs = _examples(np.random.RandomState(2).randint(1, 40, size=120).tolist())
  for i, e in enumerate(exs):
    e["objective"][:] = i  # the example's index in the stream
  runs = [list(packing.pack_dataset(_ds(exs), _FEATURES, 64, window=50).as_numpy_iterator())
          for _ in range(2)]
  assert all((a[k] == b[k]).all() for a, b in zip(*runs) for k in a)
  firsts = []
  for r in runs[0]:
    order = [int(r["objective"][r["segment_ids"] == s][0])
             for s in range(1, r["segment_ids"].max() + 1)]
    assert order == sorted(order)                      # window order inside a row
    firsts.append(order[0])
  windows = [f // 50 for f in firsts]
  assert windows == sorted(windows)                    # windows in stream order
  for w in set(windows):                               # rows by their earliest example
    in_w = [f for f, x in zip(firsts, windows) if x == w]
    assert in_w == sorted(in_w)


def test_an_example_longer_than_a_row_is_an_error_not_trimmed():
  exs = [{"targets": np.arange(1, 10, dtype=np.int32)}]
  with pytest.raises(tf.errors.InvalidArgumentError, match="longer than a row of 8"):
    list(packing.pack_dataset(_ds(exs), ["targets"], 8).as_numpy_iterator())


def test_split_documents_keeps_every_token():
  from codegen2_jax.data import objectives as O
  ds = tf.data.Dataset.from_tensor_slices(
      {"targets": tf.ragged.constant([list(range(1, 251)), [5, 6], []]),
       "source": ["a", "b", "c"]})
  ds = ds.map(lambda ex: {"targets": ex["targets"], "source": ex["source"]})
  out = list(O.split_documents(ds, {"targets": 100}, reserve=10).as_numpy_iterator())
  assert [len(o["targets"]) for o in out] == [90, 90, 70, 2]
  assert np.concatenate([o["targets"] for o in out[:3]]).tolist() == list(range(1, 251))
  assert [o["source"] for o in out] == [b"a", b"a", b"a", b"b"]


def test_zeros_inside_a_feature_stay_aligned():
  # seqio's packer counts a feature's non-zero values as its length; loss weights 0 0 1 1
  # (prefix-LM, loss_on_document=False), prefix 1 1 0 0 and token id 0 must survive it.
  exs = [{"targets": np.array([0, 7, 8, 9], np.int32),
          "loss_weights": np.array([0, 0, 1, 1], np.int32),
          "prefix": np.array([1, 1, 0, 0], np.int32),
          "objective": np.array([3, 3, 3, 3], np.int32)},
         {"targets": np.array([5, 0, 6], np.int32),
          "loss_weights": np.array([0, 1, 1], np.int32),
          "prefix": np.array([1, 0, 0], np.int32),
          "objective": np.array([0, 0, 0], np.int32)}]
  conv = converters.CodeGenFeatureConverter(pack=True)
  rows = list(conv(_ds(exs), converters.task_feature_lengths(8)).as_numpy_iterator())
  (row,) = rows
  assert row["targets"].tolist() == [0, 7, 8, 9, 5, 0, 6, 0]
  assert row["loss_weights"].tolist() == [0, 0, 1, 1, 0, 1, 1, 0]
  assert row["prefix"].tolist() == [1, 1, 0, 0, 1, 0, 0, 0]
  assert row["objective"].tolist() == [3, 3, 3, 3, 0, 0, 0, 0]
  assert row["segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
  assert row["inputs"].tolist() == [2, 0, 7, 8, 2, 5, 0, 0]


def test_unpacked_rows_pad_each_example():
  # pack=False: one example per row, padded with zeros; zeros inside a feature stay put.
  exs = [{"targets": np.array([0, 7, 8, 9], np.int32),
          "loss_weights": np.array([0, 0, 1, 1], np.int32),
          "prefix": np.array([1, 1, 0, 0], np.int32),
          "objective": np.array([3, 3, 3, 3], np.int32)},
         {"targets": np.array([5, 0, 6], np.int32),
          "loss_weights": np.array([0, 1, 1], np.int32),
          "prefix": np.array([1, 0, 0], np.int32),
          "objective": np.array([0, 0, 0], np.int32)}]
  conv = converters.CodeGenFeatureConverter(pack=False)
  rows = list(conv(_ds(exs), converters.task_feature_lengths(6)).as_numpy_iterator())
  assert len(rows) == 2
  a, b = rows
  assert a["targets"].tolist() == [0, 7, 8, 9, 0, 0]
  assert a["inputs"].tolist() == [2, 0, 7, 8, 0, 0]
  assert a["loss_weights"].tolist() == [0, 0, 1, 1, 0, 0]
  assert a["prefix"].tolist() == [1, 1, 0, 0, 0, 0]
  assert a["segment_ids"].tolist() == [1, 1, 1, 1, 0, 0]
  assert a["positions"].tolist() == [0, 1, 2, 3, 0, 0]
  assert b["targets"].tolist() == [5, 0, 6, 0, 0, 0]
  assert b["inputs"].tolist() == [2, 5, 0, 0, 0, 0]
  assert b["loss_weights"].tolist() == [0, 1, 1, 0, 0, 0]
  assert b["segment_ids"].tolist() == [1, 1, 1, 0, 0, 0]
  assert b["positions"].tolist() == [0, 1, 2, 0, 0, 0]


# --- Real data at 2048: full rows, every example intact (stdlib_demo and a Stack folder)


def _objective_examples(name: str, seq_len: int, n: int, seed: int = 0) -> list[dict]:
  """The first n examples of task or mixture `name` after its objectives: the packer's
  input in training."""
  ds = seqio.get_mixture_or_task(name).get_dataset(
      converters.task_feature_lengths(seq_len), split="train", shuffle=True, seed=seed,
      num_epochs=None)
  return [{k: ex[k] for k in _FEATURES} for ex in ds.take(n).as_numpy_iterator()]


def _check_full_rows(examples: list[dict], seq_len: int) -> float:
  conv = converters.CodeGenFeatureConverter(pack=True)
  rows = list(conv(_ds(examples), converters.task_feature_lengths(seq_len))
              .as_numpy_iterator())
  _assert_same_examples(rows, examples)
  return _fill(rows, seq_len)


def test_rows_are_full_at_2048_on_stdlib_demo(vocab):
  # One packing window of the demo mixture (code and prose, causal LM and span corruption,
  # long files split into pieces that fit).
  examples = _objective_examples("stdlib_demo", 2048, packing.DEFAULT_WINDOW)
  assert _check_full_rows(examples, 2048) >= 0.95


@pytest.fixture
def stack_folder(tmp_path):
  """A Stack-format python folder (content + licence columns) of real code: every 8th
  file of the standard library, so document lengths are those of real source files."""
  from codegen2_jax.data import sources
  docs = [text for _, text in sources.stdlib_code()[::8]]
  root = tmp_path / "stack"
  (root / "python").mkdir(parents=True)
  mit = pa.array([["MIT"]] * len(docs), type=pa.list_(pa.string()))
  pq.write_table(pa.table({"content": docs, "max_stars_repo_licenses": mit,
                           "max_issues_repo_licenses": pa.nulls(len(docs), mit.type),
                           "max_forks_repo_licenses": pa.nulls(len(docs), mit.type)}),
                 root / "python" / "data-00000-of-00001.parquet")
  return root


def test_rows_are_full_at_2048_on_stack_shaped_data(stack_folder):
  import gin
  import tasks  # noqa: F401  (registers stack_python; the CodeGen2 tokenizer)
  gin.parse_config(f"tasks.paths.data_dirs.stack = '{stack_folder}'")
  try:
    examples = _objective_examples("stack_python", 2048, packing.DEFAULT_WINDOW, seed=3)
  finally:
    gin.clear_config()
  assert _check_full_rows(examples, 2048) >= 0.95


def test_a_packed_pipeline_restores_from_a_tf_data_checkpoint(vocab, tmp_path):
  # What a checkpoint saves per host (tf.train.Checkpoint of the tf.data iterator): the
  # packer keeps no state outside tf.data, so the restored pipeline continues exactly.
  from codegen2_jax.data import pipeline
  options = tf.data.Options()
  options.experimental_external_state_policy = (
      tf.data.experimental.ExternalStatePolicy.IGNORE)

  def dataset():
    return pipeline.host_dataset("stdlib_demo", 128, 4, seed=0, shard_index=0,
                                 num_shards=1).with_options(options)

  it = iter(dataset())
  for _ in range(3):
    next(it)
  path = tf.train.Checkpoint(it=it).write(str(tmp_path / "data"))
  want = [next(it) for _ in range(3)]
  restored = iter(dataset())
  tf.train.Checkpoint(it=restored).read(path).assert_consumed()
  got = [next(restored) for _ in range(3)]
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)
  # ... from where it was saved, not from the start.
  assert not np.array_equal(next(iter(dataset()))["targets"].numpy(),
                            want[0]["targets"].numpy())
