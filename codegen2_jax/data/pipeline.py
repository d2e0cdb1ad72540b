"""Per-host batches from a seqio task or mixture: sharded, packed, resumable by position."""

from __future__ import annotations

import gc
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
    if tracker is not None:
      tracker.observe(batch)
    batch.pop("epoch", None)
    batch.pop("task", None)
    yield batch


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
      error = files.reader_error(e) or files.DataError(f"data pipeline failed: {e.message}")
    else:
      yield item
      continue
    # Outside the except block: the tf error and its traceback are released here.
    del it
    gc.collect()  # frames of the dropped traceback can form cycles holding the iterator
    raise type(error)(str(error))  # same class (CorruptFileError...), no tf traceback
