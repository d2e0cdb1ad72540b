"""The embedded default corpus: the running interpreter's standard library.

Code: every `.py` file of the standard library (site-packages excluded).
Natural language: the interpreter's bundled documentation prose, i.e. the help topics of
`pydoc_data.topics` and the docstrings of stdlib modules, classes and functions.

Documents are split deterministically into `train` and `validation` (about 2% held out)
by a CRC of their name, so the split never depends on file-system order; documents with
identical text (copied files, repeated docstrings) all take the split of the first such
name in sorted order, so no text is in both splits.
"""

from __future__ import annotations

import ast
import functools
import logging
import os
import sysconfig
from pathlib import Path

import seqio
import tensorflow as tf

from codegen2_jax.data import files

VALIDATION_EVERY = 50  # one document in 50 is held out


class _QuietUncachedWarning(logging.Filter):
  # seqio warns that a FunctionDataSource shuffles poorly on restart; ours shuffles the
  # whole document list with the run's seed, and resume restores (or replays) the exact
  # position in that order.
  def filter(self, record: logging.LogRecord) -> bool:
    return "uncached FunctionDataset" not in record.getMessage()


logging.getLogger("absl").addFilter(_QuietUncachedWarning())


def stdlib_root() -> Path:
  """Directory of the running interpreter's standard library."""
  return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
  root = stdlib_root()
  files = []
  for d, dirs, names in os.walk(root):
    dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__"))
    files.extend(Path(d) / n for n in sorted(names) if n.endswith(".py"))
  return files


@functools.lru_cache(maxsize=None)
def stdlib_code() -> tuple[tuple[str, str], ...]:
  """All stdlib sources as (name, text) pairs, name relative to the stdlib root."""
  root = stdlib_root()
  stats = files.ReadStats()
  docs = []
  for path in _stdlib_files():
    text = files.decode(path.read_bytes(), stats)  # None for empty or binary files
    if text is not None:
      docs.append((str(path.relative_to(root)), text))
  stats.documents = len(docs)
  stats.log(str(root))
  return tuple(docs)


@functools.lru_cache(maxsize=None)
def stdlib_prose(min_chars: int = 200) -> tuple[tuple[str, str], ...]:
  """Documentation prose as (name, text): pydoc help topics and docstrings (>= min_chars)."""
  docs = []
  try:
    from pydoc_data import topics
    docs.extend((f"pydoc_data/{k}", v) for k, v in sorted(topics.topics.items()))
  except ImportError:  # some distributions strip pydoc_data
    logging.warning("pydoc_data is missing; prose comes from docstrings only")
  unparsable = 0
  for name, text in stdlib_code():
    if name.startswith(("test/", "idlelib/idle_test/", "lib2to3/tests/")):
      continue
    try:
      tree = ast.parse(text)
    except (SyntaxError, ValueError):
      unparsable += 1
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= min_chars:
          label = getattr(node, "name", "<module>")
          docs.append((f"{name}:{label}", doc))
  logging.info("stdlib prose: %d documents (%d unparsable files)", len(docs), unparsable)
  return tuple(docs)


def split_docs(docs, split: str) -> list[tuple[str, str]]:
  """The documents of one split ('train' or 'validation')."""
  if split not in ("train", "validation"):
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'validation'")
  want_validation = split == "validation"
  first_name: dict[str, str] = {}  # text -> the smallest name holding it
  for name, text in docs:
    if text not in first_name or name < first_name[text]:
      first_name[text] = name
  return [d for d in docs
          if files.held_out(first_name[d[1]], VALIDATION_EVERY) == want_validation]


def _dataset_fn(docs_fn, train_every: int = 1):
  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    docs = split_docs(docs_fn(), split)
    if split == "train":
      docs = docs[::train_every]
    names = tf.constant([n for n, _ in docs], tf.string)
    texts = tf.constant([t for _, t in docs], tf.string)
    # Shuffle document INDICES and gather the texts after: a checkpoint of the pipeline's
    # iterator (pipeline.HostBatches, resume without replay) then holds ints in the
    # shuffle buffer, not every text. A buffer of the whole count with the same seed draws
    # the same permutation whatever the elements are, so the order is the one that
    # shuffling the texts gave.
    ds = tf.data.Dataset.range(len(docs))
    if shuffle_files:
      ds = ds.shuffle(len(docs), seed=seed)
    return ds.map(lambda i: {"source": tf.gather(names, i), "text": tf.gather(texts, i)})
  return dataset_fn


def stdlib_code_source(train_every: int = 1) -> seqio.DataSource:
  """seqio source of stdlib code; examples {'source': name, 'text': file content}.
  `train_every` > 1 keeps one train document in that many (validation unchanged)."""
  return seqio.FunctionDataSource(_dataset_fn(stdlib_code, train_every),
                                  splits=("train", "validation"))


def stdlib_prose_source() -> seqio.DataSource:
  """seqio source of stdlib documentation prose; examples {'source', 'text'}."""
  return seqio.FunctionDataSource(_dataset_fn(stdlib_prose), splits=("train", "validation"))


def vocab_training_texts() -> list[str]:
  """Training texts for the default vocabulary: the train split of code and prose."""
  return ([t for _, t in split_docs(stdlib_code(), "train")]
          + [t for _, t in split_docs(stdlib_prose(), "train")])
