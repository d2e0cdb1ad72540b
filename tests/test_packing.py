"""Packing: segments, positions, autoregressive inputs, and no token lost or duplicated."""

import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import converters
from codegen2_jax.data import vocab as V


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


def test_packing_loses_and_duplicates_nothing():
  lengths = np.random.RandomState(1).randint(1, 64, size=300).tolist()
  exs = _examples(lengths)
  conv = converters.CodeGenFeatureConverter(pack=True)
  rows = list(conv(_ds(exs), converters.task_feature_lengths(64)).as_numpy_iterator())
  got = []
  for row in rows:
    seg, pos = row["segment_ids"], row["positions"]
    for s in range(1, seg.max() + 1):
      idx = np.nonzero(seg == s)[0]
      assert (np.diff(idx) == 1).all()               # a segment is contiguous
      assert pos[idx].tolist() == list(range(len(idx)))  # positions restart per segment
      assert row["inputs"][idx[0]] == V.EOS_ID
      assert row["inputs"][idx[1:]].tolist() == row["targets"][idx[:-1]].tolist()
      got.append(tuple(row["targets"][idx]))
    assert (row["loss_weights"][seg == 0] == 0).all()
  want = sorted(tuple(e["targets"]) for e in exs)
  assert sorted(got) == want
  assert sum(len(g) for g in got) == sum(lengths)


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
