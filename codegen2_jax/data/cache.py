"""seqio's offline cache on Apache Beam: writing it for a mixture, and reading it back.

    python -m codegen2_jax.data cache --mixture=NAME --out=DIR [--module=M] \\
        [--runner=DirectRunner] [--pipeline_option=--NAME=VALUE ...] [--min_shards=64]
    python -m codegen2_jax.train ... --gin.USE_CACHED=True --gin.CACHE_DIRS="['DIR']"

What is cached: each task's documents after tokenization (registry.preprocessors, up to
its seqio.CacheDatasetPlaceholder), both splits, as seqio's TFRecord layout
(`DIR/<task>/{train,validation}.tfrecord-*`, `info.*.json`, `stats.*.json`, `COMPLETED`),
plus `codegen2_vocabulary.json` (the vocabulary's file and sha256). Everything after the
placeholder runs online on every read: the pass counting (data.epochs), the split of long
documents to the run's SEQ_LEN, and the objectives, whose randomness is fresh every pass.
So one cache serves every SEQ_LEN and objective mixture, but the data settings before the
placeholder (vocabulary, data paths, licence filter, read_settings) are frozen in it: a
cache read with another vocabulary than the one it was written with is refused.

A split with no document (the `validation` split of a tiny task) is cached as empty and
reads as empty; a repeated read of it (training, eval) is one line naming the task and
split (data.epochs.count_epochs), not an endless wait.

gs://: Beam writes through its own GCS client (google-cloud-storage, which follows
`STORAGE_EMULATOR_HOST`; tested on the emulator), and this module reads and writes its
own files through codegen2_jax.storage. seqio reads a cache through TensorFlow's GCS
client, whose endpoint is fixed (https://www.googleapis.com; its GCS_* variables tune
retries and caches only), so reading a gs:// cache works on GCS but is not tested here.

The Beam job is seqio's own (`seqio.scripts.cache_tasks_main.run_pipeline` with
`seqio.beam_utils`): DirectRunner here, Dataflow / Flink / Spark with --runner and
--pipeline_option. Tasks already complete in DIR are skipped, so a rerun finishes an
interrupted job. On other machines (Dataflow workers) the gin config of this command is
applied before a task is read, so gin-set data paths and vocabularies hold there too.
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import re
import time
from typing import Sequence

import gin
import seqio

from codegen2_jax import storage
from codegen2_jax.data import epochs, files
from codegen2_jax.data import vocab as V

VOCAB_RECORD = "codegen2_vocabulary.json"


class NotCachedError(files.DataError):
  """USE_CACHED is set but a task of the mixture cannot be read from CACHE_DIRS."""


@gin.configurable(module="cache")
def reading(use_cached: bool = False, cache_dirs: Sequence[str] = ()) -> tuple[bool, list[str]]:
  """(use_cached, cache_dirs) as gin sets them (macros USE_CACHED and CACHE_DIRS in
  gin/data/cache.gin); local dirs made absolute."""
  if isinstance(cache_dirs, str):  # CACHE_DIRS='dir' instead of ['dir']
    cache_dirs = [cache_dirs]
  return bool(use_cached), [os.fspath(storage.path(d)) for d in cache_dirs]


def _tasks(name: str) -> list[seqio.Task]:
  return seqio.get_subtasks(seqio.get_mixture_or_task(name))


def cache_command(name: str, out: str) -> str:
  return f"python -m codegen2_jax.data cache --mixture={name} --out={out}"


def use_cached(name: str) -> bool:
  """Whether task or mixture `name` is read from seqio's cache (gin USE_CACHED). When it
  is, adds CACHE_DIRS to seqio's cache directories and checks that every task of `name`
  is cached there with this run's vocabulary; NotCachedError names the first that is not
  and the command that caches it."""
  wanted, dirs = reading()
  if not wanted:
    return False
  if not dirs:
    raise NotCachedError("USE_CACHED=True needs the cache's directory: "
                         "--gin.CACHE_DIRS=\"['DIR']\" (written by "
                         f"`{cache_command(name, 'DIR')}`)")
  seqio.add_global_cache_dirs([d for d in dirs if d not in seqio.get_global_cache_dirs()])
  of = "" if isinstance(seqio.get_mixture_or_task(name), seqio.Task) else f" of {name!r}"
  for task in _tasks(name):
    if not task.supports_caching:
      raise NotCachedError(f"task {task.name!r}{of} cannot be cached (its source forbids "
                           "caching); train it with USE_CACHED=False")
    if not task.cache_dir:
      raise NotCachedError(f"task {task.name!r}{of} is not cached in CACHE_DIRS {dirs}; "
                           f"cache it with: {cache_command(name, dirs[0])}")
    _check_vocabulary(task, name)
  return True


def _vocabulary_record(task: seqio.Task) -> dict | None:
  """{'kind', 'sha256'} of the task's vocabulary file (None if it has no file)."""
  try:
    kind, path = V.vocabulary_file(task.output_features["targets"].vocabulary)
  except TypeError:
    return None
  return {"kind": kind, "sha256": _sha256(path)}


@functools.lru_cache(maxsize=None)
def _sha256(path: str) -> str:
  return V.sha256_file(path)


def _check_vocabulary(task: seqio.Task, name: str) -> None:
  record = storage.path(storage.join(task.cache_dir, VOCAB_RECORD))
  if not record.exists():  # written by seqio's own script: nothing to compare with
    logging.warning("%s has no %s; cannot check its vocabulary", task.cache_dir, VOCAB_RECORD)
    return
  cached = json.loads(record.read_text())
  current = _vocabulary_record(task)
  if current is not None and cached != current:
    raise NotCachedError(
        f"task {task.name!r} was cached in {task.cache_dir} with another vocabulary "
        f"({cached['kind']} sha256 {cached['sha256'][:12]}) than this run's "
        f"({current['kind']} sha256 {current['sha256'][:12]}); cache it again into a new "
        f"directory: {cache_command(name, 'NEW_DIR')}")


def _info(task_dir: str, split: str) -> dict:
  return json.loads(storage.path(seqio.get_cached_info_path(task_dir, split)).read_text())


def check_split(task: seqio.Task, split: str) -> None:
  """NotCachedError (one line) if `split` of `task`'s cache cannot be read: an empty
  split written before `write` completed empty splits' info (seqio's own script writes
  `{}`, on which seqio's reader fails with KeyError 'features')."""
  if "features" not in _info(task.cache_dir, split):
    raise NotCachedError(
        f"the {split!r} split of task {task.name!r} in {task.cache_dir} has no documents "
        "and no feature info (cached by an older writer); cache the task again into a new "
        f"directory: {cache_command(task.name, 'NEW_DIR')}")


# ----------------------------------------------------------------------------------------
# Writing

_APPLIED_CONFIGS: set[str] = set()


class _GinOnWorker:
  """Beam setup function (beam_utils.PreprocessTask's `setup_fn`): on a worker process,
  imports the modules that register the tasks and applies the writer's gin config before
  a task is read (data paths, vocabulary families, licences are gin settings). Pickled
  with the transform; a no-op where the config is applied already (the DirectRunner)."""

  def __init__(self, config: str, modules: Sequence[str]):
    self.config = config
    self.modules = tuple(modules)

  def __call__(self) -> None:
    epochs.set_markers(False)  # a worker only writes the cache, which holds no markers
    if self.config in _APPLIED_CONFIGS:
      return
    for module in self.modules:
      importlib.import_module(module)
    with gin.unlock_config():
      gin.parse_config(self.config, skip_unknown=True)
    _APPLIED_CONFIGS.add(self.config)


def write(name: str, out: str, runner: str = "DirectRunner",
          pipeline_options: Sequence[str] = (), modules: Sequence[str] = (),
          min_shards: int = 64) -> dict:
  """Caches every task of task/mixture `name` (both splits) into `out` with seqio's Beam
  pipeline; returns {'out', 'seconds', 'tasks': {task: {'dir', split: examples}}}.
  `modules`: extra modules that register tasks (imported on Beam workers too)."""
  import apache_beam as beam
  from absl import flags
  from seqio import beam_utils
  from seqio.scripts import cache_tasks_main

  if min_shards < 1:
    raise ValueError(f"--min_shards must be at least 1, got {min_shards}")
  out = os.fspath(storage.path(out))
  storage.check_writable_dir(out, "cache directory (--out)")
  tasks = _tasks(name)
  for task in tasks:
    if not task.supports_caching:
      raise ValueError(f"task {task.name!r} cannot be cached: its source forbids caching")
  # Tasks already complete in `out` are skipped. Looked up here through storage, not by
  # adding `out` to seqio's cache dirs: seqio checks those with TensorFlow's filesystem,
  # whose gs:// client cannot be pointed at a test server (README, "cache").
  todo = [t for t in tasks if not storage.path(
      storage.join(out, seqio.get_task_dir_from_name(t.name), "COMPLETED")).exists()]
  # run_pipeline reads its settings from the script's absl flags.
  flags.FLAGS(["cache_tasks_main", f"--min_shards={min_shards}"])
  modules = ["tasks", *modules]
  config = gin.config_str()
  _APPLIED_CONFIGS.add(config)
  preprocess = functools.partial(beam_utils.PreprocessTask,
                                 setup_fn=_GinOnWorker(config, modules))
  options = beam.options.pipeline_options.PipelineOptions(
      [f"--runner={runner}", *pipeline_options])
  start = time.time()
  original = beam_utils.PreprocessTask
  beam_utils.PreprocessTask = preprocess  # the pipeline seqio builds, with our setup_fn
  markers = epochs.set_markers(False)  # for the DirectRunner, which runs in this process
  written = []
  try:
    if todo:  # (run_pipeline takes no task names as "every registered task")
      with beam.Pipeline(options=options) as pipeline:
        written = cache_tasks_main.run_pipeline(
            pipeline, [re.escape(t.name) for t in todo], out, modules_to_import=modules,
            output_format="tfrecord")
  finally:
    beam_utils.PreprocessTask = original
    epochs.set_markers(markers)
  seconds = time.time() - start
  for task in tasks:
    task_dir = storage.join(out, seqio.get_task_dir_from_name(task.name))
    if task_dir in written:
      for split in task.splits:
        _complete_empty_split(task, task_dir, split)
      record = _vocabulary_record(task)
      if record is not None:
        storage.path(storage.join(task_dir, VOCAB_RECORD)).write_text(json.dumps(record))
  summary = {}
  for task in tasks:
    task_dir = storage.join(out, seqio.get_task_dir_from_name(task.name))
    entry = {"dir": task_dir, "written": task_dir in written}
    for split in task.splits:
      stats = storage.path(seqio.get_cached_stats_path(task_dir, split))
      if stats.exists():
        entry[split] = json.loads(stats.read_text()).get("examples")
    summary[task.name] = entry
  return {"mixture": name, "out": out, "seconds": round(seconds, 1), "tasks": summary}


def _complete_empty_split(task: seqio.Task, task_dir: str, split: str) -> None:
  """Gives an empty split the info seqio's reader needs, so it reads as empty.

  seqio's writer takes a split's feature info from one of its examples (beam_utils.
  GetInfo) and writes `{}` when there is none (the `validation` split of a tiny task);
  seqio's reader then fails with KeyError 'features'. The features are the ones the
  pre-cache pipeline produces, read from its element_spec without reading a document,
  in GetInfo's format (first dimension of a sequence None)."""
  info_path = storage.path(seqio.get_cached_info_path(task_dir, split))
  if "features" in json.loads(info_path.read_text()):
    return
  markers = epochs.set_markers(False)  # as the writers ran: `epoch_end` always False
  try:
    ds = task.preprocess_precache(task.source.get_dataset(split=split, shuffle=False))
  finally:
    epochs.set_markers(markers)
  features = {}
  for key, spec in ds.element_spec.items():
    shape = spec.shape.as_list()
    features[key] = {"shape": [None] + shape[1:] if shape else [], "dtype": spec.dtype.name}
  prefix = seqio.get_cached_tfrecord_prefix(task_dir, split)
  shards = storage.path(os.path.dirname(prefix)).glob(os.path.basename(prefix) + "-*-of-*")
  info = {"features": features, "num_shards": len(list(shards)),
          "seqio_version": seqio.__version__}
  info_path.write_text(json.dumps(info, sort_keys=True, indent=2))
  logging.info("%s: the %s split has no documents; cached as empty", task.name, split)
