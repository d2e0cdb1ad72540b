"""Vocabularies as seqio Vocabularies, and the copy of its vocabulary every run carries.

Two kinds:

- `CodeGenVocabulary`: a SentencePiece BPE trained here (the CPU demo's, on the stdlib),
  with the CodeGen2 special tokens at fixed ids so objectives can name them without a
  lookup:

      0 <pad>   1 <unk>   2 <|endoftext|> (EOS)   3 <sep>   4 <eom>
      5 ... 4+N  <mask_1> ... <mask_N>   then "\t", then the learned BPE pieces.

  The trainer settings are the ones DESIGN.md measured to round-trip source code byte for
  byte (byte fallback, identity normalisation, whitespace-only pieces, no dummy prefix).
- `HfTokenizerVocabulary`: a Hugging Face tokenizer.json; `codegen2_tokenizer()` is the
  released CodeGen2 one (bundled: 51,200 ids, `<|endoftext|>` 50256, `<sep>` 50299,
  `<eom>` 50300, `<mask_k>` 51200 - k, no pad token: id 0 is `!`).

A run is self-contained: `save_to_run` copies the vocabulary file into
`MODEL_DIR/vocab/` (spm.model or tokenizer.json) with a manifest.json holding its sha256,
and `load_from_run` gives it back, so a run moved to another machine decodes as it trained.

Every path here may be a gs:// URL (I/O goes through codegen2_jax.storage). SentencePiece
loads only local files, so a remote model is read once, checked against its sha256 and
kept in the local cache under `remote/<sha256>/` (`local_copy`); deleting the cache only
costs a new download.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

import gin
import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf
from etils import epath

from codegen2_jax import storage

PAD_ID, UNK_ID, EOS_ID, SEP_ID, EOM_ID = 0, 1, 2, 3, 4
FIRST_MASK_ID = 5
NUM_SENTINELS = 64
EOS, SEP, EOM, PAD = "<|endoftext|>", "<sep>", "<eom>", "<pad>"


def mask_token(k: int) -> str:
  """The k-th sentinel piece, 1-based: mask_token(1) == '<mask_1>'."""
  return f"<mask_{k}>"


def mask_id(k: int) -> int:
  """Token id of `<mask_k>` (1-based)."""
  if not 1 <= k <= NUM_SENTINELS:
    raise ValueError(f"sentinel <mask_{k}> out of range 1..{NUM_SENTINELS}")
  return FIRST_MASK_ID + k - 1


USER_SYMBOLS = [SEP, EOM] + [mask_token(k) for k in range(1, NUM_SENTINELS + 1)] + ["\t"]


def default_cache_dir() -> Path:
  """Where trained vocabularies live: $CODEGEN2_JAX_CACHE or ~/.cache/codegen2_jax."""
  return Path(os.environ.get("CODEGEN2_JAX_CACHE", Path.home() / ".cache" / "codegen2_jax"))


def _chunks(texts: Iterable[str], max_chars: int) -> Iterator[str]:
  """Multi-line training 'sentences' (SentencePiece's file input would split on newlines)."""
  for text in texts:
    buf: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
      if size + len(line) > max_chars and buf:
        yield "".join(buf)
        buf, size = [], 0
      buf.append(line[:max_chars])
      size += len(buf[-1])
    if buf:
      yield "".join(buf)


def train_sentencepiece(texts: Iterable[str], out_path: str | os.PathLike, vocab_size: int,
                        max_sentences: int = 200_000) -> Union[Path, epath.Path]:
  """Trains a byte-exact BPE model on `texts` and writes `out_path` (.model, local or
  gs://) atomically.

  Returns the path. Ids of the special tokens are those at the top of this module.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_chunks(texts, 4000),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="bpe",
      byte_fallback=True,
      split_digits=True,
      normalization_rule_name="identity",
      remove_extra_whitespaces=False,
      add_dummy_prefix=False,
      allow_whitespace_only_pieces=True,
      split_by_whitespace=True,
      character_coverage=1.0,
      max_sentence_length=16384,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      pad_id=PAD_ID, pad_piece=PAD,
      unk_id=UNK_ID, unk_piece="<unk>",
      eos_id=EOS_ID, eos_piece=EOS,
      bos_id=-1,
      user_defined_symbols=USER_SYMBOLS,
      num_threads=os.cpu_count() or 1,
      minloglevel=2,
  )
  return _write_atomic(out_path, model.getvalue())


def _write_atomic(path, data: bytes) -> Union[Path, epath.Path]:
  """Writes `data` to `path` so that no reader sees half of it: locally a temporary file
  renamed over it; on gs:// one object upload (an object appears whole, at close).
  Creates the parent folder. Returns the path (pathlib locally, epath for a URL)."""
  if storage.is_remote(path):
    p = storage.path(path)
    p.write_bytes(data)
    return p
  p = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, p)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return p


def local_copy(path, sha256: str | None = None) -> tuple[Path, str]:
  """(a local file with the bytes of `path`, their sha256). A local path is itself; a
  gs:// one is read once and kept under `default_cache_dir()/remote/<sha256>/<name>`.
  `sha256` given: bytes that do not match are a RunVocabularyError naming `path`."""
  if not storage.is_remote(path):
    local = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    got = sha256_file(local)
  else:
    p = storage.path(path)
    if not p.exists():
      raise FileNotFoundError(f"vocabulary file {p} does not exist")
    data = p.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    local = default_cache_dir() / "remote" / got / p.name
    if sha256 is None or got == sha256:
      if not local.exists() or sha256_file(local) != got:  # a damaged cache is rewritten
        _write_atomic(local, data)
  if sha256 is not None and got != sha256:
    raise RunVocabularyError(f"{path} has sha256 {got[:12]}..., not the "
                             f"{sha256[:12]}... its manifest.json records")
  return local, got


class CodeGenVocabulary(seqio.SentencePieceVocabulary):
  """seqio SentencePiece vocabulary that trains its model on first use if it is missing.

  Args:
    path: the .model file.
    train_texts: a zero-argument callable returning the training texts; called only when
      `path` does not exist yet (the vocabulary is then cached at `path`).
    vocab_size: size to train.
  """

  def __init__(self, path: str | os.PathLike, train_texts=None, vocab_size: int = 8192):
    super().__init__(str(path), extra_ids=0)
    self._train_texts = train_texts
    self._train_size = vocab_size

  def ensure_trained(self) -> Union[Path, epath.Path]:
    """Trains and caches the model if the file does not exist; returns its path."""
    name = self.sentencepiece_model_file
    path = storage.path(name) if storage.is_remote(name) else Path(name)
    if not path.exists():
      if self._train_texts is None:
        raise FileNotFoundError(f"SentencePiece model {path} does not exist and this "
                                "vocabulary has no training texts to build it from")
      logging.info("training a %d-piece SentencePiece vocabulary -> %s", self._train_size, path)
      train_sentencepiece(self._train_texts(), path, self._train_size)
    return path

  def _model_context(self):
    if self._model:
      return self._model
    self.ensure_trained()
    if not storage.is_remote(self.sentencepiece_model_file):
      return super()._model_context()
    # SentencePiece (and seqio's loader, through TensorFlow's GCS client) reads local
    # files only: load the cached local copy; the vocabulary keeps naming its URL.
    local, _ = local_copy(self.sentencepiece_model_file)
    overrides = self._normalizer_spec_overrides
    self._model = seqio.vocabularies._load_model(  # pylint: disable=protected-access
        str(local), self._extra_ids,
        overrides.SerializeToString(deterministic=True) if overrides else None,
        self._reverse_extra_ids)
    return self._model

  def __eq__(self, other):
    if not isinstance(other, seqio.SentencePieceVocabulary):
      return NotImplemented  # lets a lazy vocabulary (registry) compare by what it names
    return super().__eq__(other)

  def decode_visible(self, ids: Sequence[int]) -> str:
    """Decodes ids showing every special token (`<|endoftext|>`, `<pad>`), for inspection.

    Unlike `decode`, it does not stop at the first `<|endoftext|>`.
    """
    out: list[str] = []
    run: list[int] = []
    sp = self.tokenizer
    for i in list(ids) + [None]:
      if i is None or i in (PAD_ID, EOS_ID, UNK_ID):
        if run:
          out.append(sp.decode(run))
          run = []
        if i is not None:
          out.append(sp.id_to_piece(int(i)))
      else:
        run.append(int(i))
    return "".join(out)


# ----------------------------------------------------------------------------------------
# Special-token ids of any vocabulary, and a vocabulary over a Hugging Face tokenizer.json


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """Ids of the CodeGen2 special tokens in one vocabulary (masks[k-1] is <mask_k>).

  `pad` is None when the vocabulary has no padding token (CodeGen2's): padding is never
  a token id anyway, it is segment id 0 (data.converters).
  """
  eos: int
  sep: int
  eom: int
  pad: int | None
  masks: tuple[int, ...]

  def mask(self, k: int) -> int:
    """Id of <mask_k> (1-based)."""
    if not 1 <= k <= len(self.masks):
      raise ValueError(f"sentinel <mask_{k}> out of range 1..{len(self.masks)}")
    return self.masks[k - 1]


DEFAULT_SPECIAL_IDS = SpecialIds(eos=EOS_ID, sep=SEP_ID, eom=EOM_ID, pad=PAD_ID,
                                 masks=tuple(range(FIRST_MASK_ID,
                                                   FIRST_MASK_ID + NUM_SENTINELS)))


def special_ids(vocabulary) -> SpecialIds:
  """The special ids of a vocabulary: its `special_ids` attribute, else ours (fixed ids)."""
  ids = getattr(vocabulary, "special_ids", None)
  return ids if isinstance(ids, SpecialIds) else DEFAULT_SPECIAL_IDS


class HfTokenizerVocabulary(seqio.Vocabulary):
  """seqio Vocabulary over a Hugging Face `tokenizer.json` (e.g. CodeGen2's own file).

  The file must define `<|endoftext|>`, `<sep>`, `<eom>` and `<mask_1>` (more `<mask_k>`
  are used when present, in order); a missing one is an error naming it. `pad_id` is the
  `<pad>` token's id, or None when there is none (CodeGen2's tokenizer: id 0 is `!`, a
  real token); no code path takes a token id for padding.
  """

  def __init__(self, path: str | os.PathLike):
    super().__init__(extra_ids=0)
    self._path = str(path)
    self._tok = None

  @property
  def tokenizer_file(self) -> str:
    """Path of the tokenizer.json."""
    return self._path

  @property
  def tokenizer(self):
    if self._tok is None:
      from tokenizers import Tokenizer
      path = storage.path(self._path)  # local or gs:// alike
      if not path.exists():
        raise FileNotFoundError(f"Hugging Face tokenizer file {self._path} does not exist")
      self._tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    return self._tok

  @functools.cached_property
  def special_ids(self) -> SpecialIds:
    tok = self.tokenizer
    ids = {}
    for name in (EOS, SEP, EOM, mask_token(1)):
      i = tok.token_to_id(name)
      if i is None:
        raise ValueError(f"tokenizer {self._path} has no {name!r} token, which the CodeGen2 "
                         "objectives need")
      ids[name] = i
    masks = []
    while (i := tok.token_to_id(mask_token(len(masks) + 1))) is not None:
      masks.append(i)
    return SpecialIds(eos=ids[EOS], sep=ids[SEP], eom=ids[EOM], pad=tok.token_to_id(PAD),
                      masks=tuple(masks))

  @property
  def eos_id(self) -> int:
    return self.special_ids.eos

  @property
  def pad_id(self) -> int | None:
    return self.special_ids.pad

  @property
  def unk_id(self):
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

  def decode_visible(self, ids) -> str:
    """Decodes showing every special token."""
    return self._decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """A string scalar -> int32 [n]; a string vector -> int32 RaggedTensor [batch, None]
    (one `encode_batch` call, which runs outside the GIL on all cores: what
    `tokenize_documents` uses, since one `encode` per document holds the GIL)."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 1:
      def enc_batch(x):
        texts = [t.decode("utf-8") for t in x.numpy()]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        return (np.fromiter((i for row in ids for i in row), np.int32),
                np.asarray([len(row) for row in ids], np.int64))
      flat, lengths = tf.py_function(enc_batch, [s], (tf.int32, tf.int64))
      flat.set_shape([None])
      lengths.set_shape(s.shape)
      return tf.RaggedTensor.from_row_lengths(flat, lengths, validate=False)

    def enc(x):
      return np.asarray(self._encode(x.numpy().decode("utf-8")), np.int32)
    out = tf.py_function(enc, [s], tf.int32)
    out.set_shape([None])
    return out

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    out = tf.py_function(lambda x: self._decode(x.numpy().tolist()), [ids], tf.string)
    out.set_shape([])
    return out

  def decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """Decodes a 1-D id tensor through its first <|endoftext|>.

    seqio's version overwrites what follows EOS with pad_id, which here would be a real
    token (or None); this one cuts the ids instead.
    """
    ids = tf.convert_to_tensor(ids, tf.int32)
    after = tf.cumsum(tf.cast(tf.equal(ids, self.eos_id), tf.int32), exclusive=True)
    return self._decode_tf(tf.boolean_mask(ids, tf.equal(after, 0)))

  def __eq__(self, other):
    if not isinstance(other, HfTokenizerVocabulary):
      return NotImplemented  # lets a lazy vocabulary (registry) compare by what it names
    return other._path == self._path

  def __hash__(self):
    return hash(self._path)


# ----------------------------------------------------------------------------------------
# The released CodeGen2 tokenizer, bundled with the package

CODEGEN2_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "codegen2_tokenizer"


@functools.lru_cache(maxsize=None)
def codegen2_tokenizer() -> HfTokenizerVocabulary:
  """The released CodeGen2 tokenizer (bundled tokenizer.json, 51,200 ids, Apache-2.0)."""
  return HfTokenizerVocabulary(CODEGEN2_TOKENIZER_DIR / "tokenizer.json")


def check_model_rows(vocab_size: int, model_vocab_size: int) -> None:
  """ValueError if the model has fewer embedding rows than the vocabulary has ids; a
  one-line warning if more than a tenth of its rows would never be used (e.g. the 8,192
  stdlib pieces in a 51,200-row CodeGen2 model)."""
  if vocab_size > model_vocab_size:
    raise ValueError(f"the vocabulary has {vocab_size} pieces but ModelConfig.vocab_size is "
                     f"{model_vocab_size}; set ModelConfig.vocab_size >= {vocab_size}")
  if vocab_size < 0.9 * model_vocab_size:
    logging.warning("the vocabulary has %d pieces but ModelConfig.vocab_size is %d: %d "
                    "embedding rows will never be used", vocab_size, model_vocab_size,
                    model_vocab_size - vocab_size)


# ----------------------------------------------------------------------------------------
# The run's own copy: MODEL_DIR/vocab/{spm.model | tokenizer.json, manifest.json}

RUN_VOCAB_DIR = "vocab"
MANIFEST = "manifest.json"
_KINDS = {"sentencepiece": "spm.model", "hf_tokenizer": "tokenizer.json"}


class RunVocabularyError(ValueError):
  """A run's vocabulary copy is damaged or is not the one a resumed run would train with."""


def _resolved(vocabulary):
  """The concrete vocabulary behind a lazy one (registry.FamilyVocabulary), else itself."""
  return getattr(vocabulary, "resolved", vocabulary)


def vocabulary_file(vocabulary) -> tuple[str, str]:
  """(kind, path of the file) of a file-backed vocabulary; trains a SentencePiece
  vocabulary first if it is not trained yet. Raises TypeError for other vocabularies."""
  v = _resolved(vocabulary)
  if isinstance(v, HfTokenizerVocabulary):
    return "hf_tokenizer", v.tokenizer_file
  if isinstance(v, seqio.SentencePieceVocabulary):
    if hasattr(v, "ensure_trained"):
      v.ensure_trained()
    return "sentencepiece", v.sentencepiece_model_file
  raise TypeError(f"{type(v).__name__} is not backed by a SentencePiece .model or a "
                  "tokenizer.json file, so a run cannot carry a copy of it")


def sha256_file(path) -> str:
  """Hex sha256 of a file, local or gs://."""
  h = hashlib.sha256()
  with storage.path(path).open("rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def _vocab_dir(run_dir) -> str:
  return storage.join(run_dir, RUN_VOCAB_DIR)


def read_manifest(run_dir) -> dict | None:
  """The run's vocab/manifest.json, or None when the run has no vocabulary copy."""
  path = storage.join(_vocab_dir(run_dir), MANIFEST)
  if not storage.path(path).exists():
    return None
  text = storage.path(path).read_text(encoding="utf-8")
  try:
    manifest = json.loads(text)
  except ValueError as e:
    raise RunVocabularyError(f"{path} is not valid JSON ({e})") from e
  missing = [k for k in ("kind", "file", "sha256") if k not in manifest]
  if missing:
    raise RunVocabularyError(f"{path} lacks {', '.join(missing)}")
  if _KINDS.get(manifest["kind"]) != manifest["file"]:
    raise RunVocabularyError(f"{path}: kind {manifest['kind']!r} with file "
                             f"{manifest['file']!r}; expected one of {_KINDS}")
  return manifest


def save_to_run(vocabulary, run_dir, prepend_eos: bool = True) -> Union[Path, epath.Path]:
  """Copies the vocabulary's file into run_dir/vocab/ (local or gs://) and writes
  manifest.json beside it (kind, file, sha256, prepend_eos); returns the vocab folder.
  A SentencePiece vocabulary that is not trained yet is trained first.

  `prepend_eos`: whether prompts start with <|endoftext|> (True for runs trained here).
  """
  kind, src = vocabulary_file(vocabulary)
  out = _vocab_dir(run_dir)
  data = storage.path(src).read_bytes()  # a few MB at most
  _write_atomic(storage.join(out, _KINDS[kind]), data)
  manifest = {"kind": kind, "file": _KINDS[kind], "sha256": hashlib.sha256(data).hexdigest(),
              "prepend_eos": bool(prepend_eos)}
  # The manifest goes last: a folder with a manifest always holds its whole file.
  _write_atomic(storage.join(out, MANIFEST), (json.dumps(manifest, indent=1) + "\n").encode())
  return storage.path(out) if storage.is_remote(out) else Path(out)


def load_from_run(run_dir) -> seqio.Vocabulary | None:
  """The vocabulary a run carries (run_dir/vocab/), or None if it carries none.

  The returned vocabulary has `prepend_eos` from the manifest (decoding reads it). A file
  whose sha256 is not the manifest's is a RunVocabularyError naming the file.
  """
  manifest = read_manifest(run_dir)
  if manifest is None:
    return None
  path = storage.join(_vocab_dir(run_dir), manifest["file"])
  if not storage.path(path).exists():
    raise RunVocabularyError(f"{path} is missing (its manifest.json names it)")
  # A gs:// copy is checked and loaded from the local cache (one download).
  local, _ = local_copy(path, manifest["sha256"])
  vocab = (HfTokenizerVocabulary(local) if manifest["kind"] == "hf_tokenizer"
           else CodeGenVocabulary(local))
  vocab.prepend_eos = bool(manifest.get("prepend_eos", True))
  return vocab


def record_in_run(vocabulary, run_dir, write: bool = True) -> str | None:
  """At train start: a run without a vocabulary copy gets one (if `write`); a run with one
  (a resume) must be about to train with the same file, else RunVocabularyError.

  Trains a SentencePiece vocabulary first if needed. Returns the file's sha256, or None
  for a vocabulary that is not file-backed (a warning says the run carries no copy).
  """
  try:
    kind, src = vocabulary_file(vocabulary)
  except TypeError as e:
    logging.warning("%s", e)
    return None
  want = sha256_file(src)
  manifest = read_manifest(run_dir)
  if manifest is None:
    if write:
      save_to_run(vocabulary, run_dir)
    return want
  if manifest["sha256"] != want:
    path = storage.join(_vocab_dir(run_dir), manifest["file"])
    family = getattr(vocabulary, "family", None)
    fix = (f"; to resume with the run's own copy, add --gin.registry.family_vocabulary."
           f"{family}=\"'{path}'\"" if family else "")
    raise RunVocabularyError(
        f"{run_dir} trained with {path} (sha256 {manifest['sha256'][:12]}...) but this "
        f"run's task vocabulary is {src} (sha256 {want[:12]}...){fix}")
  return want


# ----------------------------------------------------------------------------------------
# Tokenizing documents in a task pipeline


@gin.configurable(module="vocab")
def tokenize_documents(dataset: tf.data.Dataset, output_features, batch_size: int = 32
                       ) -> tf.data.Dataset:
  """seqio preprocessor: the string `targets` of each example -> int32 token ids (no EOS),
  other features unchanged, order kept; what seqio.preprocessors.tokenize does for
  `targets`, but `batch_size` documents per call and tf.data's own parallelism.

  Why not seqio's: it encodes one document per call with 256 calls in flight per task.
  A Hugging Face tokenizer then runs one document at a time under the GIL (one core
  whatever the host has), and a checkpoint of the pipeline (pipeline.HostBatches) holds
  every finished call, up to 256 whole documents per task. Here a Hugging Face
  tokenizer encodes a batch outside the GIL (`encode_batch`), SentencePiece a batch in
  one TF op, and AUTOTUNE keeps about as many batches in flight as there are cores.
  Other vocabularies are encoded one document per call (seqio's path, AUTOTUNE)."""
  if "targets" not in dataset.element_spec:
    return dataset
  resolved = _resolved(output_features["targets"].vocabulary)
  if not isinstance(resolved, (seqio.SentencePieceVocabulary, HfTokenizerVocabulary)):
    return dataset.map(lambda ex: {**ex, "targets": resolved.encode_tf(ex["targets"])},
                       num_parallel_calls=tf.data.AUTOTUNE)

  def encode(batch):
    return {**batch, "targets": tf.cast(resolved.encode_tf(batch["targets"]), tf.int32)}

  # unbatch leaves ragged-rank-0 specs; the identity map makes them plain tensors again.
  return (dataset.batch(batch_size)
          .map(encode, num_parallel_calls=tf.data.AUTOTUNE)
          .unbatch()
          .map(lambda ex: {k: tf.convert_to_tensor(v) for k, v in ex.items()}))
