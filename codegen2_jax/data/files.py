"""File-backed seqio sources in the real formats, sharded per host by file.

Formats (each yields examples {'source': str, 'text': str}):

    parquet     The Stack (v1.1 dedup layout): one document per row of a text column
                (`content`); files under a directory per language
    jsonl       The Pile: one JSON object per line, {"text": ..., "meta": {...}};
                `.jsonl` or zstandard-compressed `.jsonl.zst`
    tree        any local directory of source files, filtered by extension

Bad records never stop the pipeline: invalid UTF-8 is decoded with replacement (and
counted), empty and binary documents and unparsable JSON lines are skipped (and counted);
each file's counts go to one log line. Long documents are split later (see
objectives.split_documents), never dropped.

Splits: every file feeds `train` and `validation`; one document in `VALIDATION_EVERY`
(chosen by a CRC of its name) is held out of train and is the validation split.
Sharding: with at least as many files as hosts, each host reads its own files
(`files[index::count]`); seqio shards by example otherwise.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import seqio
import tensorflow as tf

VALIDATION_EVERY = 1000
BINARY_SNIFF_BYTES = 8192


@dataclass
class ReadStats:
  """What a reader saw in one file."""
  documents: int = 0
  replaced_utf8: int = 0
  empty: int = 0
  binary: int = 0
  bad_lines: int = 0

  def log(self, path: str) -> None:
    logging.info("read %s: %d documents, %d with invalid UTF-8 (replaced), %d empty, "
                 "%d binary, %d unparsable lines skipped", path, self.documents,
                 self.replaced_utf8, self.empty, self.binary, self.bad_lines)


def decode(data: bytes | str, stats: ReadStats) -> str | None:
  """bytes -> str with invalid UTF-8 replaced; None (counted) for empty or binary data."""
  if isinstance(data, str):
    text = data
    raw = None
  else:
    raw = data
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
      stats.binary += 1
      return None
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      text = raw.decode("utf-8", errors="replace")
      stats.replaced_utf8 += 1
  if not text.strip():
    stats.empty += 1
    return None
  if raw is None and "\x00" in text[:BINARY_SNIFF_BYTES]:
    stats.binary += 1
    return None
  return text


def read_parquet(path: str, column: str = "content") -> Iterator[tuple[str, str]]:
  """(name, text) for each row of `column` in a parquet file (The Stack layout)."""
  import pyarrow.parquet as pq
  stats = ReadStats()
  f = pq.ParquetFile(path)
  if column not in f.schema_arrow.names:
    raise ValueError(f"{path} has no column {column!r} (columns: {f.schema_arrow.names})")
  row = 0
  for batch in f.iter_batches(columns=[column], batch_size=1024):
    for value in batch.column(0).to_pylist():
      row += 1
      text = decode(value, stats) if value is not None else None
      if value is None:
        stats.empty += 1
      if text is not None:
        stats.documents += 1
        yield f"{path}:{row - 1}", text
  stats.log(path)


def _open_lines(path: str) -> io.BufferedReader:
  if path.endswith(".zst"):
    import zstandard
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
  return open(path, "rb")


def read_jsonl(path: str, text_key: str = "text") -> Iterator[tuple[str, str]]:
  """(name, text) for each JSON line of a .jsonl or .jsonl.zst file (The Pile layout)."""
  stats = ReadStats()
  with _open_lines(path) as f:
    for i, line in enumerate(f):
      if not line.strip():
        continue
      try:
        record = json.loads(line.decode("utf-8", errors="replace"))
        value = record[text_key]
        if not isinstance(value, str):
          raise TypeError(type(value).__name__)
      except (ValueError, KeyError, TypeError):
        stats.bad_lines += 1
        continue
      text = decode(value, stats)
      if text is not None:
        stats.documents += 1
        yield f"{path}:{i}", text
  stats.log(path)


def read_file(path: str) -> Iterator[tuple[str, str]]:
  """(path, text) of one source file, if it is neither empty nor binary."""
  stats = ReadStats()
  text = decode(Path(path).read_bytes(), stats)
  if text is not None:
    yield path, text
  elif stats.binary or stats.empty:
    logging.info("skipped %s (%s)", path, "binary" if stats.binary else "empty")


def held_out(name: str, every: int) -> bool:
  """Whether document `name` belongs to the validation split (one in `every`, by CRC)."""
  return zlib.crc32(name.encode()) % every == 0


class FileSource(seqio.DataSource):
  """A seqio source over a list of files resolved when first read.

  Args:
    list_files: zero-argument callable returning the file paths (called lazily, so a task
      can be registered before its data exists); an empty list is an error naming
      `description`.
    reader: path -> iterator of (name, text).
    description: what the files are, for error messages ("The Stack python under X").
    validation_every: one document in this many (by CRC of its name) is `validation`.
    train_file_every: `train` reads one file in this many (a smaller corpus to repeat for
      more epochs, lesson 5); `validation` always reads every file.
  """

  def __init__(self, list_files: Callable[[], Sequence[str]],
               reader: Callable[[str], Iterator[tuple[str, str]]], description: str,
               validation_every: int = VALIDATION_EVERY, train_file_every: int = 1):
    super().__init__(splits=("train", "validation"), caching_permitted=False)
    self._list_files = list_files
    self._reader = reader
    self._description = description
    self._every = validation_every
    self._train_file_every = train_file_every

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def files(self) -> list[str]:
    files = sorted(self._list_files())
    if not files:
      raise FileNotFoundError(f"no input files for {self._description}")
    return files

  def list_shards(self, split: str) -> Sequence[str]:
    return self.files()[::self._train_file_every] if split == "train" else self.files()

  @property
  def output_features(self):
    return {"source": tf.string, "text": tf.string}

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    if split not in self.splits:
      raise ValueError(f"unknown split {split!r} for {self._description}")
    files = self.files()
    if split == "train":
      files = files[::self._train_file_every]
    if shard_info and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    want_validation = split == "validation"
    reader, every = self._reader, self._every

    def generate(path):
      path = path.decode() if isinstance(path, bytes) else path
      for name, text in reader(path):
        if held_out(name, every) == want_validation:
          yield {"source": name, "text": text}

    spec = {"source": tf.TensorSpec([], tf.string), "text": tf.TensorSpec([], tf.string)}
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    ds = files_ds.interleave(
        lambda p: tf.data.Dataset.from_generator(generate, output_signature=spec, args=(p,)),
        cycle_length=min(len(files), 8), block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
      ds = ds.shuffle(1024, seed=seed)
    return ds

  def num_input_examples(self, split: str) -> int | None:
    return None


def directory_files(root: str | os.PathLike, patterns: Sequence[str], what: str
                    ) -> Callable[[], list[str]]:
  """A lazy file lister for `root`/pattern...; a missing root fails naming `what`."""
  def list_files() -> list[str]:
    r = Path(root).expanduser()
    if not r.is_dir():
      raise FileNotFoundError(f"{what}: expected a directory at {r}, which does not exist")
    found = set()
    for pattern in patterns:
      found.update(glob.glob(str(r / pattern), recursive=True))
    return sorted(p for p in found if os.path.isfile(p))
  return list_files


def parquet_source(root: str | os.PathLike, what: str, column: str = "content") -> FileSource:
  """Parquet files under `root` (recursively), documents from `column`."""
  return FileSource(directory_files(root, ["**/*.parquet"], what),
                    lambda p: read_parquet(p, column), f"{what} (parquet under {root})")


def jsonl_source(root: str | os.PathLike, what: str, text_key: str = "text") -> FileSource:
  """.jsonl / .jsonl.zst files under `root` (or one such file)."""
  if str(root).endswith((".jsonl", ".jsonl.zst")):
    lister = lambda: [str(root)] if Path(root).is_file() else []  # noqa: E731
  else:
    lister = directory_files(root, ["**/*.jsonl", "**/*.jsonl.zst"], what)
  return FileSource(lister, lambda p: read_jsonl(p, text_key),
                    f"{what} (.jsonl/.jsonl.zst under {root})")


def tree_source(root: str | os.PathLike, extensions: Sequence[str], what: str) -> FileSource:
  """Every file under `root` whose name ends with one of `extensions` ('.py', '.rs')."""
  patterns = [f"**/*{ext}" for ext in extensions]
  return FileSource(directory_files(root, patterns, what), read_file,
                    f"{what} ({', '.join(extensions)} files under {root})",
                    validation_every=50)
