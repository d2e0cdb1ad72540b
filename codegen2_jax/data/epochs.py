"""Multi-epoch sampling with the epoch counted (the paper's lesson 5).

seqio repeats a task's tokenized documents (`num_epochs=None` in training) before the
preprocessors after its cache placeholder (registry.preprocessors), so every pass draws
fresh objectives (new span masks, new split points). What seqio does
not say is which pass a sequence came from. Here:

    EpochMarkedSource   wraps any seqio DataSource and appends ONE marker example after
                        the last document of this host's shard
    count_epochs        the task's first preprocessor after tokenization (and after
                        seqio's cache placeholder, so it also runs on cached data): a scan
                        over the repeated stream that numbers passes 1, 2, ...
                        (incrementing at each marker, which it then drops) and tags every
                        example with `epoch` and `task`
    EpochTracker        host side: reads the per-token `epoch` / `task` features of each
                        packed batch, reports the mean epoch per task in the metrics and
                        logs when a task starts a new pass

Worked example, a task of documents [A, B] repeated (before the task's shuffle buffer):

    source after repeat:   A  B  <end>  A  B  <end>  A ...
    after count_epochs:    A1 B1        A2 B2        A3 ...   (epoch per example)

The objectives and the packer carry both tags per token (0 on padding), so a packed row
that mixes tasks and passes still says where each token came from.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zlib
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

EPOCH_END = "epoch_end"


def task_id(name: str) -> int:
  """A stable positive int32 id for task `name` (0 is padding)."""
  return zlib.crc32(name.encode()) % (2**31 - 2) + 1


def task_names() -> dict[int, str]:
  """{task_id: name} over every registered seqio task."""
  return {task_id(n): n for n in seqio.TaskRegistry.names()}


def _zeros_like_spec(spec: tf.TensorSpec) -> tf.Tensor:
  shape = [0 if d is None else d for d in spec.shape.as_list()]
  if spec.dtype == tf.string:
    return tf.fill(shape, "")
  return tf.zeros(shape, spec.dtype)


_MARKERS = {"on": True}


def set_markers(on: bool) -> bool:
  """Whether EpochMarkedSource appends its pass markers in this process (default True;
  False in seqio's cache writers). Returns the previous setting."""
  previous, _MARKERS["on"] = _MARKERS["on"], bool(on)
  return previous


class EpochMarkedSource(seqio.DataSource):
  """`source`, plus one end-of-pass marker example (feature `epoch_end`) after its data.

  It shards by itself (by the inner source's shards when there are enough, else by
  example) so that every host's shard, not just one host, ends with a marker.

  seqio's offline cache is written from this source, but without markers (data.cache
  calls `set_markers(False)` in its writers: the writer shuffles globally, so markers would
  land at random places); reading the cache through this class (registry.CodeGenTask) adds
  one at the end of each host's shard. Markers in the inner stream (a cache written by
  seqio's own script) are dropped for the same reason.
  """

  def __init__(self, source: seqio.DataSource, caching_permitted: bool | None = None):
    permitted = source.caching_permitted if caching_permitted is None else caching_permitted
    super().__init__(splits=source.splits, caching_permitted=permitted)
    self.inner = source

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  @property
  def output_features(self):
    return self.inner.output_features

  def list_shards(self, split: str):
    return self.inner.list_shards(split)

  def num_input_examples(self, split: str):
    return None  # with the marker, the inner count would be off by one

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed=None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    if (shard_info is None or shard_info.num_shards <= 1
        or self.inner.supports_arbitrary_sharding
        or len(self.inner.list_shards(split)) >= shard_info.num_shards):
      ds = self.inner.get_dataset(split=split, shuffle=shuffle, seed=seed,
                                  shard_info=shard_info)
    else:
      ds = self.inner.get_dataset(split=split, shuffle=shuffle, seed=seed)
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    if EPOCH_END in ds.element_spec:  # a cache's markers: at random places, so useless
      ds = ds.filter(lambda ex: tf.logical_not(ex[EPOCH_END]))
    if not _MARKERS["on"]:
      return ds.map(lambda ex: {**ex, EPOCH_END: tf.constant(False)})
    marker = {k: _zeros_like_spec(s) for k, s in ds.element_spec.items()}
    marker[EPOCH_END] = tf.constant(True)
    ds = ds.map(lambda ex: {**ex, EPOCH_END: tf.constant(False)})
    return ds.concatenate(tf.data.Dataset.from_tensors(marker))


_BUILDING = threading.local()  # the split whose pipeline this thread is building


@contextlib.contextmanager
def building(split: str):
  """Names `split` to count_epochs while a task's pipeline is built in this thread
  (registry.CodeGenTask.get_dataset), for its error line."""
  previous, _BUILDING.split = getattr(_BUILDING, "split", None), split
  try:
    yield
  finally:
    _BUILDING.split = previous


def _fail_empty(task: str, split: str | None):
  def fail():
    from codegen2_jax.data import files
    where = f"{split!r} split" if split else "split being read"
    error = files.DataError(
        f"task {task or '?'!r} has no document in its {where} (on this host's shard): "
        "a repeated read of it would never yield an example; add documents, or leave the "
        "task out of this split's mixture")
    files._remember(error)  # so the reader prints this line, not TensorFlow's traceback
    raise error
  return fail


def count_epochs(dataset: tf.data.Dataset, task: str = "") -> tf.data.Dataset:
  """seqio preprocessor: adds scalar `epoch` (1-based pass number) and `task` (task_id)
  to each example of a stream from EpochMarkedSource, dropping the markers.

  Example: [A, B, <end>, A, B, <end>] -> [A (epoch 1), B (1), A (2), B (2)].
  A stream without markers (a source not wrapped) stays at epoch 1.
  A split with no document gives the stream [<end>, <end>, ...] when repeated, which
  would spin forever without yielding: two empty passes in a row raise files.DataError
  naming the task and split. One empty pass (num_epochs=1) just reads as empty.
  """
  tid = tf.constant(task_id(task) if task else 0, tf.int32)
  if EPOCH_END not in dataset.element_spec:
    return dataset.map(lambda ex: {**ex, "epoch": tf.constant(1, tf.int32), "task": tid})
  fail = _fail_empty(task, getattr(_BUILDING, "split", None))

  def step(state, ex):
    epoch, documents, empty_passes = state  # documents: in this pass so far
    ex = dict(ex)
    end = ex.pop(EPOCH_END)
    empty_passes = tf.where(end, tf.where(documents > 0, 0, empty_passes + 1), empty_passes)
    ok = tf.cond(empty_passes < 2, lambda: tf.constant(True),
                 lambda: tf.py_function(fail, [], tf.bool))
    with tf.control_dependencies([ok]):
      documents = tf.where(end, 0, documents + 1)
    return ((epoch + tf.cast(end, tf.int32), documents, empty_passes),
            (dict(ex, epoch=epoch, task=tid), end))

  zero = tf.constant(0, tf.int32)
  counted = dataset.scan((tf.constant(1, tf.int32), zero, zero), step)
  # Two lambdas on one line defeat AutoGraph's source lookup (a 9-line warning each, per
  # pipeline); neither needs converting.
  not_end = tf.autograph.experimental.do_not_convert(lambda ex, end: tf.logical_not(end))
  example = tf.autograph.experimental.do_not_convert(lambda ex, end: ex)
  return counted.filter(not_end).map(example)


class EpochTracker:
  """Which pass over each task the training batches come from.

  `observe(batch)` removes the `epoch` / `task` features from a host batch (the model
  does not need them) and remembers, per task, the token-weighted mean epoch since the
  last `metrics()` call and the highest epoch seen so far; `news()` announces new passes.
  """

  def __init__(self, names: Mapping[int, str] | None = None):
    self._names = dict(names) if names is not None else task_names()
    self._sum: dict[int, float] = {}
    self._count: dict[int, float] = {}
    self.highest: dict[str, int] = {}
    self._news: list[str] = []

  def name(self, tid: int) -> str:
    return self._names.get(tid, f"task_{tid}")

  def observe(self, batch: dict[str, np.ndarray]) -> None:
    epoch = batch.pop("epoch", None)
    task = batch.pop("task", None)
    if epoch is None or task is None:
      return
    real = task > 0
    epoch = epoch[real]
    tids, inverse = np.unique(task[real], return_inverse=True)
    sums = np.bincount(inverse, weights=epoch, minlength=len(tids))
    counts = np.bincount(inverse, minlength=len(tids))
    tops = np.zeros(len(tids), epoch.dtype)
    np.maximum.at(tops, inverse, epoch)
    for tid, s, c, top in zip(tids.tolist(), sums, counts, tops.tolist()):
      self._sum[tid] = self._sum.get(tid, 0.0) + float(s)
      self._count[tid] = self._count.get(tid, 0.0) + float(c)
      name = self.name(tid)
      if top > self.highest.get(name, 1):
        self._news.append(f"data: {name} reached epoch {top}")
      self.highest[name] = max(self.highest.get(name, 0), top)

  def news(self) -> list[str]:
    """Lines announcing each task's new passes since the last call (then forgotten)."""
    out, self._news = self._news, []
    for line in out:
      logging.info(line)
    return out

  def metrics(self) -> dict[str, float]:
    """{'epoch/<task>': mean epoch of that task's tokens since the last call}."""
    out = {f"epoch/{self.name(t)}": self._sum[t] / self._count[t]
           for t in self._sum if self._count[t]}
    self._sum, self._count = {}, {}
    return out
