"""Per-host batches from a seqio task or mixture: sharded, packed, and resumable: the
iterator's state is saved with each checkpoint and restored directly (HostBatches), or,
for a checkpoint without it, the position is replayed (`batches(ds, skip=N)`)."""

from __future__ import annotations

import gc
import os
from typing import Iterator

import jax
import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import cache, converters, epochs, files
from codegen2_jax.data import vocab as V


def check_name(name: str) -> None:
  """Raises ValueError naming `name` (with close matches) unless it is registered."""
  known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
  if name not in known:
    import difflib
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown seqio task or mixture {name!r}{hint} (registered: "
                     f"{len(known)}; import the module that registers it, e.g. `tasks`)")


def host_dataset(name: str, seq_len: int, batch_size: int, split: str = "train",
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                 shard_index: int | None = None, num_shards: int | None = None,
                 pack: bool = True, track_epochs: bool = True) -> tf.data.Dataset:
  """This host's tf.data pipeline of packed rows, batched to the per-host batch size.

  With `track_epochs`, rows also carry per-token `epoch` and `task` features (see
  data.epochs; `batches` hands them to an EpochTracker and drops them).

  `batch_size` is GLOBAL (sequences per step over all hosts); each host reads its own
  shard (default: jax.process_index() of jax.process_count()) and yields
  batch_size / num_shards rows per step. The pipeline is deterministic for a seed.
  With gin USE_CACHED=True it reads the tasks' tokenized documents from seqio's offline
  cache in CACHE_DIRS (data.cache; cache.NotCachedError if a task is not there).
  """
  check_name(name)
  shard_index = jax.process_index() if shard_index is None else shard_index
  num_shards = jax.process_count() if num_shards is None else num_shards
  if batch_size % num_shards:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by {num_shards} hosts")
  vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  converter = converters.CodeGenFeatureConverter(pack=pack, bos_id=V.special_ids(vocab).eos,
                                                 track_epochs=track_epochs)
  ds = seqio.get_dataset(
      name, converters.task_feature_lengths(seq_len, track_epochs), converter,
      dataset_split=split, shuffle=shuffle,
      num_epochs=num_epochs, seed=seed, use_cached=cache.use_cached(name),
      shard_info=seqio.ShardInfo(shard_index, num_shards) if num_shards > 1 else None)
  return ds.batch(batch_size // num_shards, drop_remainder=True).prefetch(2)


def batches(ds: tf.data.Dataset, skip: int = 0, tracker: epochs.EpochTracker | None = None
            ) -> Iterator[dict[str, np.ndarray]]:
  """numpy batches of `ds` (model features only), after skipping `skip` batches (resume at
  a data position). The `epoch` / `task` features go to `tracker` (if any), never on."""
  if skip:
    ds = ds.skip(skip)
  for batch in numpy_iterator(ds):
    yield _model_batch(batch, tracker)


def _model_batch(batch: dict, tracker: epochs.EpochTracker | None) -> dict:
  """`batch` without its `epoch` / `task` features, which go to `tracker` (if any)."""
  if tracker is not None:
    tracker.observe(batch)
  batch.pop("epoch", None)
  batch.pop("task", None)
  return batch


def _pipeline_error(e: tf.errors.OpError) -> files.DataError:
  """The one-line DataError for a tf.data error: the source's own, or a generic one."""
  return files.reader_error(e) or files.DataError(f"data pipeline failed: {e.message}")


def _raise_without_iterator(error: files.DataError):
  """Raises a copy of `error` once the caller has dropped its tf.data iterator (see
  numpy_iterator: no tf traceback may keep the iterator alive)."""
  gc.collect()  # frames of the dropped traceback can form cycles holding the iterator
  raise type(error)(str(error))  # same class (CorruptFileError...), no tf traceback


def _dir_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


# What a tf.data checkpoint of the training pipeline leaves out ("external state"), and
# why restoring into a freshly built pipeline of the same settings is still exact: it
# saves every iterator's position and buffer (sources' ranges and document indices,
# FileSource's per-file document indices, the shuffle buffers and their random state,
# seqio's post-preprocess shuffle, sample_from_datasets' random state, count_epochs'
# scan state, EpochMarkedSource's concatenate, repeat, interleave and packing buffers,
# batch, prefetch). Ignored are only the Python functions that the pipeline calls
# through py_function: FileSource's document reader (its state, the open-file cursors,
# is rebuilt from the saved document index: files._Cursors), the HuggingFace tokenizer
# (a pure function of its input) and split_documents' long-document log counter (a
# statistic for a log line, no effect on the data). Random ops are stateless with
# seeds carried in the data (objectives), so nothing random lives outside the state.
# A packer (converters / packing) must keep its state in tf.data (scan, buffers), not in
# Python, for this to stay exact.
_CHECKPOINTABLE = tf.data.Options()
_CHECKPOINTABLE.experimental_external_state_policy = (
    tf.data.experimental.ExternalStatePolicy.IGNORE)
STATE_PREFIX = "iterator"  # tf.train.Checkpoint files: iterator.index, iterator.data-*


class HostBatches:
  """This host's numpy batches (model features only) with a checkpointable position.

  Iterating yields the batches of `ds`; the `epoch` / `task` features go to `tracker`
  (if any), never on. `save_state(dir)` writes the tf.data iterator's state after the
  batches taken so far into a local directory; `restore_state(dir)` on a HostBatches
  built from the same pipeline settings continues from there without reading the
  batches before it. Read errors come out as files.DataError (see numpy_iterator).
  """

  def __init__(self, ds: tf.data.Dataset, tracker: epochs.EpochTracker | None = None):
    self._ds = ds.with_options(_CHECKPOINTABLE)
    self._it = iter(self._ds)
    self._tracker = tracker
    self.taken = 0  # batches taken from this object (not counting a restored position)
    self.state_bytes = None  # size of the last state saved (save_state)

  def __iter__(self) -> "HostBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      raise StopIteration
    try:
      item = next(self._it)
    except tf.errors.OpError as e:
      error = _pipeline_error(e)
    else:
      self.taken += 1
      return _model_batch({k: v.numpy() for k, v in item.items()}, self._tracker)
    self._it = None  # see numpy_iterator: the iterator must go before the error is raised
    _raise_without_iterator(error)

  def save_state(self, directory: str) -> int:
    """Writes the iterator state into local `directory` (created); returns its bytes."""
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(iterator=self._it).write(os.path.join(directory, STATE_PREFIX))
    self.state_bytes = _dir_bytes(directory)
    return self.state_bytes

  def restore_state(self, directory: str) -> int:
    """Continues from the state save_state wrote into local `directory`; returns its
    bytes."""
    tf.train.Checkpoint(iterator=self._it).read(
        os.path.join(directory, STATE_PREFIX)).assert_consumed()
    return _dir_bytes(directory)


def numpy_iterator(ds: tf.data.Dataset) -> Iterator:
  """`ds.as_numpy_iterator()`, except that an error raised while reading (a source's
  DataError, or any tf.data error) comes out as a files.DataError with the source's own
  one-line message, and after the tf.data iterator is gone.

  Why: a tf.data iterator whose pipeline runs Python (from_generator sources) must be
  destroyed while the interpreter is alive. TensorFlow's error keeps the iterator alive
  through its traceback (the iterator's own `__next__` frame); an uncaught exception is
  kept in `sys.last_traceback` until interpreter shutdown, whose teardown then destroys
  the iterator while holding the GIL, and its tf.data worker threads, still inside or
  entering the Python generators, wait for that GIL forever: the process prints the error
  and sometimes never exits. Here the error is dropped, the iterator deleted (its worker
  threads end normally) and a plain DataError raised instead, whose traceback holds no
  iterator.
  """
  it = ds.as_numpy_iterator()
  while True:
    try:
      item = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      error = _pipeline_error(e)
    else:
      yield item
      continue
    # Outside the except block: the tf error and its traceback are released here.
    del it
    _raise_without_iterator(error)
