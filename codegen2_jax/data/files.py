"""File-backed seqio sources in the real formats, sharded per host by file.

Formats (each yields examples {'source': str, 'text': str}):

    parquet     The Stack (v1.1 dedup layout): one document per row of a text column
                (`content`), optionally kept only when its licence columns list accepted
                licences (LicenseFilter); files under a directory per language
    jsonl       The Pile: one JSON object per line, {"text": ..., "meta": {...}};
                `.jsonl`, zstandard-compressed `.jsonl.zst` or gzip `.jsonl.gz`
    tree        any directory of source files, filtered by extension

Every directory and file may be local or a gs:// URL (codegen2_jax.storage): a gs://
folder is listed in one paged request, and files are streamed (parquet row group by row
group, compressed streams chunk by chunk), never read whole into memory.

Bad records never stop the pipeline: invalid UTF-8 is decoded with replacement (and
counted), empty and binary documents and unparsable JSON lines are skipped (and counted);
each file's counts go to one log line. A bad FILE does stop it: a truncated or corrupt
compressed file, or an unreadable parquet file, raises CorruptFileError naming the file
(`read_settings.skip_corrupt_files = True` skips such files instead, each counted in a log
line). Documents longer than `read_settings.max_document_chars` are cut into consecutive
pieces of at most that many characters, so no stage holds one huge document; pieces (and
every document) are split again to fit a row later (objectives.split_documents).

Listing: directory trees are walked without following directory symlinks (no loops, no
escaping the tree), and a file reached through several paths (file symlinks) is read once
(GCS has no symlinks).
Splits: every file feeds `train` and `validation`; one document in `VALIDATION_EVERY`
(chosen by a CRC of its CONTENT, so copies of a document always land in the same split)
is held out of train and is the validation split.
Sharding: with at least as many files as hosts, each host reads its own files
(`files[index::count]`); seqio shards by example otherwise.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import logging
import os
import threading
import zlib
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import gin
import seqio
import tensorflow as tf

from codegen2_jax import storage

VALIDATION_EVERY = 1000
BINARY_SNIFF_BYTES = 8192
_READ_CHUNK = 1 << 20  # compressed bytes read at a time
_STREAM_BLOCK = 8 << 20  # bytes per ranged GET when streaming a gs:// jsonl file
_PARQUET_BLOCK = 1 << 20  # readahead past each read of a gs:// parquet file


class DataError(Exception):
  """A source cannot be read as configured (a missing column, say); names the file."""


class CorruptFileError(DataError):
  """A file is truncated or corrupt (bad compressed stream, unreadable parquet)."""


@gin.configurable
def read_settings(skip_corrupt_files: bool = False,
                  max_document_chars: int = 1 << 16) -> dict:
  """How file sources treat bad files and huge documents (gin: `read_settings.X = ...`).

  skip_corrupt_files: skip a truncated or corrupt file (its documents read before the
    damage are kept) and count it in a log line, instead of stopping with an error.
  max_document_chars: documents longer than this are yielded as consecutive pieces of at
    most this many characters (cut after a newline when one is near the end), so memory
    stays bounded by the piece size whatever the document; nothing is dropped. 64 Ki
    characters is some 10-30 rows of 2048 tokens, so the extra cuts are rare, and the
    tokenizer never sees a huge string (one 1 MB line took 0.9 GB in TensorFlow's
    SentencePiece op, against 0.1 GB in 64 Ki pieces).
  """
  if max_document_chars < 1:
    raise ValueError(f"read_settings.max_document_chars must be positive, not "
                     f"{max_document_chars}")
  return {"skip_corrupt_files": skip_corrupt_files, "max_document_chars": max_document_chars}


# The last DataError raised inside a tf.data reader thread. TensorFlow re-raises it in the
# consumer as an OpError whose message holds the whole Python traceback; entry points use
# `reader_error` to print the original one-line message instead.
_LAST_ERROR: list[DataError] = []


def reader_error(error: BaseException) -> DataError | None:
  """The DataError behind `error` (a tf.errors.OpError from a source), if there is one."""
  if isinstance(error, DataError):
    return error
  for e in reversed(_LAST_ERROR):
    if str(e) in str(error):
      return e
  return None


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


# The licence columns of The Stack v1.1 (lists of SPDX-like names per repository).
STACK_LICENSE_COLUMNS = ("max_stars_repo_licenses", "max_issues_repo_licenses",
                         "max_forks_repo_licenses")


@dataclass
class LicenseFilter:
  """Keeps a row when every non-empty licence column lists only accepted licences and at
  least one column is non-empty. Counts kept and dropped rows over all files of a task
  (thread-safe: tf.data reads several files at once) and logs a running total per file.

  `accepted` is a collection of names, or a zero-argument callable returning one (read
  when the first file is read, so a gin setting can supply it).
  """
  accepted: Iterable[str] | Callable[[], Iterable[str]]
  task: str
  columns: Sequence[str] = STACK_LICENSE_COLUMNS
  kept: int = 0
  dropped: int = 0
  _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
  _names: frozenset | None = field(default=None, repr=False)

  def names(self) -> frozenset:
    with self._lock:
      if self._names is None:
        value = self.accepted() if callable(self.accepted) else self.accepted
        self._names = frozenset(value)
      return self._names

  def keeps(self, licence_lists: Sequence[Sequence[str] | None]) -> bool:
    """Whether a row with these licence lists (one per column; None or [] = empty) passes."""
    names = self.names()
    present = [x for x in licence_lists if x]
    return bool(present) and all(name in names for x in present for name in x)

  def count(self, kept: int, dropped: int, path: str) -> None:
    with self._lock:
      self.kept += kept
      self.dropped += dropped
      total_kept, total_dropped = self.kept, self.dropped
    logging.info("licence filter %s: %d documents kept, %d dropped (licences outside the "
                 "%d accepted) so far, after %s", self.task, total_kept, total_dropped,
                 len(self.names()), path)


def _documents(items: Iterable[tuple[str, bytes | str | None]], stats: ReadStats, path: str
               ) -> Iterator[tuple[str, str]]:
  """(name, text) for each (name, raw value) that decodes to a document (None, empty and
  binary values counted in `stats`); logs `path`'s counts at the end."""
  for name, value in items:
    if value is None:
      stats.empty += 1
      continue
    text = decode(value, stats)
    if text is not None:
      stats.documents += 1
      yield name, text
  stats.log(path)


def _open_parquet(path: str):
  # pyarrow reads a local file natively; a gs:// object through the storage layer's file
  # object, with seeks and ranged reads (footer, then the wanted column chunks of each row
  # group). Small blocks: pyarrow's own reads are whole column chunks, so readahead
  # beyond them would mostly fetch the columns it skips.
  if storage.is_remote(path):
    return storage.open_read(path, block_size=_PARQUET_BLOCK)
  return nullcontext(path)


def read_parquet(path: str, column: str = "content",
                 licenses: LicenseFilter | None = None) -> Iterator[tuple[str, str]]:
  """(name, text) for each row of `column` in a parquet file (The Stack layout), only the
  rows `licenses` keeps when it is given."""
  return _documents(_parquet_values(path, column, licenses), ReadStats(), path)


def _parquet_values(path: str, column: str, licenses: LicenseFilter | None
                    ) -> Iterator[tuple[str, bytes | str | None]]:
  """(name, raw value) of the rows `licenses` keeps, a record batch at a time."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    opened = _open_parquet(path)
  except OSError as e:  # gone from the bucket since it was listed, say
    raise CorruptFileError(f"{path} is not a readable parquet file ({e})") from None
  with opened as source:
    try:
      # pre_buffer (pyarrow's default) fetches the wanted columns of every row group
      # before the first batch: the whole file in memory. Off, it reads a row group's
      # column chunks when their batches are reached.
      f = pq.ParquetFile(source, pre_buffer=False)
      names = f.schema_arrow.names
    except (OSError, pa.ArrowException) as e:
      raise CorruptFileError(f"{path} is not a readable parquet file ({e})") from None
    if column not in names:
      raise DataError(f"{path} has no column {column!r} (columns: {names})")
    wanted = [column]
    if licenses is not None:
      missing = [c for c in licenses.columns if c not in names]
      if missing:
        raise DataError(f"{path} has no licence column(s) {', '.join(missing)} (columns: "
                        f"{names}); the licence filter of {licenses.task} needs them")
      wanted += list(licenses.columns)
    row = kept = dropped = 0
    try:
      for batch in f.iter_batches(columns=wanted, batch_size=1024):
        values = batch.column(0).to_pylist()
        keep = [True] * len(values)
        if licenses is not None:
          lists = [batch.column(i).to_pylist() for i in range(1, len(wanted))]
          keep = [licenses.keeps(row_lists) for row_lists in zip(*lists)]
        for value, ok in zip(values, keep):
          row += 1
          if not ok:
            dropped += 1
            continue
          kept += 1
          yield f"{path}:{row - 1}", value
    except (OSError, pa.ArrowException) as e:
      raise CorruptFileError(f"{path} is corrupt after row {row} ({e})") from None
  if licenses is not None:
    licenses.count(kept, dropped, path)


def _zstd_chunks(f, path: str) -> Iterator[bytes]:
  # zstandard's stream_reader ends quietly at a truncated frame; a decompressobj says
  # whether its frame ended (`eof`), so a file that stops inside a frame is an error.
  import zstandard
  dctx = zstandard.ZstdDecompressor()
  d, started = dctx.decompressobj(), False
  while True:
    data = f.read(_READ_CHUNK)
    if not data:
      break
    while data:
      started = True
      try:
        out = d.decompress(data)
      except zstandard.ZstdError as e:
        raise CorruptFileError(f"{path} is not a valid zstandard stream ({e})") from None
      if out:
        yield out
      if d.eof:  # a frame ended; the rest (if any) starts the next frame
        data = d.unused_data
        d, started = dctx.decompressobj(), False
      else:
        data = b""
  if started:
    raise CorruptFileError(f"{path} is truncated: its zstandard stream ends inside a frame")


def _gzip_chunks(f, path: str) -> Iterator[bytes]:
  import zlib as _zlib
  try:
    with gzip.GzipFile(fileobj=f) as g:
      while True:
        data = g.read(_READ_CHUNK)
        if not data:
          return
        yield data
  except EOFError:
    raise CorruptFileError(f"{path} is truncated: its gzip stream ends early") from None
  except (gzip.BadGzipFile, _zlib.error) as e:
    raise CorruptFileError(f"{path} is not a valid gzip stream ({e})") from None


def _raw_chunks(f, path: str) -> Iterator[bytes]:
  while True:
    data = f.read(_READ_CHUNK)
    if not data:
      return
    yield data


def read_lines(path: str) -> Iterator[bytes]:
  """The lines (bytes, newline kept) of a plain, `.zst` or `.gz` file; a truncated or
  corrupt compressed file raises CorruptFileError naming it."""
  chunks = (_zstd_chunks if path.endswith(".zst") else
            _gzip_chunks if path.endswith(".gz") else _raw_chunks)
  with storage.open_read(path, block_size=_STREAM_BLOCK) as f:
    pending: list[bytes] = []  # the parts of an unfinished line (a long line spans chunks)
    for chunk in chunks(f, path):
      if b"\n" not in chunk:
        pending.append(chunk)
        continue
      lines = chunk.split(b"\n")
      pending.append(lines[0])
      yield b"".join(pending) + b"\n"
      for line in lines[1:-1]:
        yield line + b"\n"
      pending = [lines[-1]] if lines[-1] else []
    if pending:
      yield b"".join(pending)


def read_jsonl(path: str, text_key: str = "text") -> Iterator[tuple[str, str]]:
  """(name, text) for each JSON line of a .jsonl, .jsonl.zst or .jsonl.gz file (The Pile)."""
  stats = ReadStats()
  return _documents(_jsonl_values(path, text_key, stats), stats, path)


def _jsonl_values(path: str, text_key: str, stats: ReadStats) -> Iterator[tuple[str, str]]:
  """(name, value of `text_key`) per JSON line; unparsable lines counted in `stats`."""
  for i, line in enumerate(read_lines(path)):
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
    yield f"{path}:{i}", value


def read_file(path: str) -> Iterator[tuple[str, str]]:
  """(path, text) of one source file, if it is neither empty nor binary."""
  stats = ReadStats()
  text = decode(storage.path(path).read_bytes(), stats)
  if text is not None:
    yield path, text
  elif stats.binary or stats.empty:
    logging.info("skipped %s (%s)", path, "binary" if stats.binary else "empty")


def held_out(key: str, every: int) -> bool:
  """Whether the document whose content (or name) is `key` belongs to the validation
  split (one in `every`, by CRC)."""
  return zlib.crc32(key.encode("utf-8", "surrogatepass")) % every == 0


def pieces(text: str, max_chars: int) -> Iterator[str]:
  """`text` cut into consecutive pieces of at most `max_chars` characters, each ending
  after a newline when there is one in its last tenth ("".join(pieces) == text).

  >>> list(pieces("abcdefgh", 3)), list(pieces("ab\ncdefghijklmnopq", 3))[0]
  (['abc', 'def', 'gh'], 'ab\n')
  """
  start = 0
  while len(text) - start > max_chars:
    end = start + max_chars
    newline = text.rfind("\n", end - max(max_chars // 10, 1), end)
    if newline >= start:
      end = newline + 1
    yield text[start:end]
    start = end
  yield text[start:]


_NO_END = (1 << 62)  # "count up forever" for Dataset.range: a file ends at its first miss
MAX_OPEN_FILES = 32  # open cursors per dataset: interleave's 8 files plus its prefetched ones


class _Cursors:
  """Document i of a file, from a bounded, thread-safe cache of open readers.

  A file's documents are asked for in order (0, 1, 2, ...), so the cursor left at i
  serves i next from its open reader. Any other i (the first ask of a pipeline restored
  from a checkpoint, a file read again in the next epoch, a cursor evicted past
  MAX_OPEN_FILES) reopens the file and skips to i: bounded by the file's size, never by
  the run's length. Calls for one file come one at a time (its stream is sequential);
  different files are read concurrently by tf.data's threads.
  """

  def __init__(self, open_file: Callable[[str], Iterator[dict]], count: Callable[[int], None]):
    self._open_file = open_file
    self._count = count
    self._lock = threading.Lock()
    self._open: OrderedDict[str, tuple[int, Iterator[dict]]] = OrderedDict()

  def document(self, path: str, i: int) -> dict | None:
    """Document `i` of `path` (an example dict), None past its last."""
    with self._lock:
      at, docs = self._open.pop(path, (None, None))
    if at != i:
      if docs is not None:
        docs.close()
      docs, at = self._open_file(path), 0
    try:
      while True:
        doc = next(docs, None)
        if doc is None:
          break
        self._count(1)
        if at == i:
          break
        at += 1
    except BaseException:
      docs.close()
      raise
    if doc is None:
      docs.close()
      return None
    with self._lock:
      self._open[path] = (i + 1, docs)
      evicted = self._open.popitem(last=False)[1][1] if len(self._open) > MAX_OPEN_FILES else None
    if evicted is not None:
      evicted.close()
    return doc


def _remember(error: DataError) -> None:
  _LAST_ERROR.append(error)
  del _LAST_ERROR[:-8]


class FileSource(seqio.DataSource):
  """A seqio source over a list of files resolved when first read.

  Args:
    list_files: zero-argument callable returning the file paths (called lazily, so a task
      can be registered before its data exists); an empty list is an error naming
      `description`. Paths to the same real file are read once.
    reader: path -> iterator of (name, text).
    description: what the files are, for error messages ("The Stack python under X").
    validation_every: one document in this many (by CRC of its content) is `validation`.
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
    self._lock = threading.Lock()
    self._skipped_files = 0
    self.documents_read = 0  # documents taken from readers (tests: a restore reads few)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def files(self) -> list[str]:
    files, seen = [], set()
    for path in sorted(self._list_files()):
      real = path if storage.is_remote(path) else os.path.realpath(path)
      if real not in seen:
        seen.add(real)
        files.append(path)
    if not files:
      raise FileNotFoundError(f"no input files for {self._description}")
    return files

  def list_shards(self, split: str) -> Sequence[str]:
    return self.files()[::self._train_file_every] if split == "train" else self.files()

  @property
  def output_features(self):
    return {"source": tf.string, "text": tf.string}

  def _skip(self, error: CorruptFileError) -> None:
    with self._lock:
      self._skipped_files += 1
      n = self._skipped_files
    logging.warning("skipped a corrupt file of %s (%d skipped so far; "
                    "read_settings.skip_corrupt_files = True): %s", self._description, n, error)

  def documents(self, path: str, split: str, settings: dict | None = None
                ) -> Iterator[dict[str, str]]:
    """The examples of one file that belong to `split`, huge documents cut in pieces.

    The split is decided on the whole document's content (its pieces stay together)."""
    settings = settings or read_settings()
    want_validation = split == "validation"
    try:
      for name, text in self._reader(path):
        if held_out(text, self._every) != want_validation:
          continue
        for k, piece in enumerate(pieces(text, settings["max_document_chars"])):
          yield {"source": name if k == 0 else f"{name}#{k}", "text": piece}
    except CorruptFileError as e:
      if not settings["skip_corrupt_files"]:
        _remember(e)
        raise
      self._skip(e)
    except DataError as e:
      _remember(e)
      raise

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    """Documents of `split` (this shard's files), interleaved 8 files at a time.

    Each file is an index-addressable stream (`Dataset.range` -> document i, see
    _Cursors), so a tf.data checkpoint of the pipeline holds a document index per open
    file and restores without reading the documents before it (resume without replay).
    """
    if split not in self.splits:
      raise ValueError(f"unknown split {split!r} for {self._description}")
    files = self.files()
    if split == "train":
      files = files[::self._train_file_every]
    if shard_info and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    settings = read_settings()  # here, in the caller's thread, not in tf.data's
    cursors = _Cursors(lambda path: self.documents(path, split, settings), self._count_read)

    def fetch(path, i):
      doc = cursors.document(path.numpy().decode(), int(i.numpy()))
      if doc is None:
        return b"", b"", False
      return doc["source"], doc["text"], True

    def file_documents(path):
      # A file's documents by index; the end is the first index with no document.
      docs = tf.data.Dataset.range(_NO_END).map(
          lambda i: tf.py_function(fetch, [path, i], [tf.string, tf.string, tf.bool]))
      docs = docs.take_while(lambda source, text, more: more)
      return docs.map(lambda source, text, more: {"source": tf.ensure_shape(source, []),
                                                  "text": tf.ensure_shape(text, [])})

    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    ds = files_ds.interleave(
        file_documents, cycle_length=min(len(files), 8), block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if shuffle:
      ds = ds.shuffle(1024, seed=seed)
    return ds

  def _count_read(self, n: int) -> None:
    with self._lock:
      self.documents_read += n

  def num_input_examples(self, split: str) -> int | None:
    return None


def walk_files(root: str | os.PathLike, patterns: Sequence[str]) -> list[str]:
  """Files under `root` (local or gs://) matching any of `patterns`, sorted, each real
  file once.

  Patterns are globs relative to `root`: `*.py` matches at the top only, `**/*.py` at any
  depth (the top included). Directory symlinks are never followed (a loop or a link out
  of the tree cannot multiply or leak files); file symlinks are, and a file reached by
  several paths is listed once (its first path in walk order). A gs:// folder is listed
  in one paged request (storage.list_tree).
  """
  return list(walk_file_sizes(root, patterns))


def walk_file_sizes(root: str | os.PathLike, patterns: Sequence[str]) -> dict[str, int]:
  """walk_files with each file's size in bytes: {path: size}, sorted by path (sizes
  come with the listing, so a gs:// folder costs no request per file)."""
  top = os.fspath(storage.path(root))
  remote = storage.is_remote(top)
  found: dict[str, tuple[str, int]] = {}
  for path, size in storage.list_tree(top).items():
    rel = path[len(top.rstrip("/")) + 1:] if remote else os.path.relpath(path, top)
    if any(_matches(rel, p) for p in patterns):
      found.setdefault(path if remote else os.path.realpath(path), (path, size))
  return dict(sorted(found.values()))


def _matches(rel: str, pattern: str) -> bool:
  if pattern.startswith("**/"):
    return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern[3:])
  return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)


def list_directory(root: str | os.PathLike, patterns: Sequence[str], what: str
                   ) -> dict[str, int]:
  """{path: size} of the files under `root`/pattern... (see walk_files); a missing root
  (local or gs://) is a FileNotFoundError naming `what` and the root."""
  r = storage.path(root)
  found = walk_file_sizes(r, patterns)
  if not found and not r.is_dir():  # asked only when nothing matched: one listing else
    state = "is a file" if r.exists() else "does not exist"
    raise FileNotFoundError(f"{what}: expected a directory at {r}, which {state}")
  return found


def directory_files(root: str | os.PathLike, patterns: Sequence[str], what: str
                    ) -> Callable[[], list[str]]:
  """A lazy file lister for `root`/pattern... (see list_directory)."""
  return lambda: list(list_directory(root, patterns, what))


def parquet_source(root: str | os.PathLike, what: str, column: str = "content",
                   licenses: LicenseFilter | None = None) -> FileSource:
  """Parquet files under `root` (recursively), documents from `column` (only the rows
  `licenses` keeps, when given)."""
  return FileSource(directory_files(root, ["**/*.parquet"], what),
                    lambda p: read_parquet(p, column, licenses), f"{what} (parquet under {root})")


JSONL_SUFFIXES = (".jsonl", ".jsonl.zst", ".jsonl.gz")


def jsonl_source(root: str | os.PathLike, what: str, text_key: str = "text") -> FileSource:
  """.jsonl / .jsonl.zst / .jsonl.gz files under `root` (or one such file)."""
  if str(root).endswith(JSONL_SUFFIXES):
    def lister():
      f = storage.path(root)
      return [os.fspath(f)] if f.is_file() else []
  else:
    lister = directory_files(root, [f"**/*{s}" for s in JSONL_SUFFIXES], what)
  return FileSource(lister, lambda p: read_jsonl(p, text_key),
                    f"{what} ({'/'.join(JSONL_SUFFIXES)} under {root})")


def tree_source(root: str | os.PathLike, extensions: Sequence[str], what: str) -> FileSource:
  """Every file under `root` whose name ends with one of `extensions` ('.py', '.rs')."""
  patterns = [f"**/*{ext}" for ext in extensions]
  return FileSource(directory_files(root, patterns, what), read_file,
                    f"{what} ({', '.join(extensions)} files under {root})",
                    validation_every=50)
