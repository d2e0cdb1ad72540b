"""SentencePiece vocabulary with the CodeGen2 special tokens, as a seqio Vocabulary.

Token ids are fixed by construction so that objectives can name them without a lookup:

    0 <pad>   1 <unk>   2 <|endoftext|> (EOS)   3 <sep>   4 <eom>
    5 ... 4+N  <mask_1> ... <mask_N>   then "\t", then the learned BPE pieces.

The trainer settings are the ones DESIGN.md measured to round-trip source code byte for
byte (byte fallback, identity normalisation, whitespace-only pieces, no dummy prefix).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import seqio
import sentencepiece as spm
import tensorflow as tf

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
                        max_sentences: int = 200_000) -> Path:
  """Trains a byte-exact BPE model on `texts` and writes `out_path` (.model) atomically.

  Returns the path. Ids of the special tokens are those at the top of this module.
  """
  out_path = Path(out_path)
  out_path.parent.mkdir(parents=True, exist_ok=True)
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
  # Write to a temporary file and rename: a concurrent reader never sees half a model.
  fd, tmp = tempfile.mkstemp(dir=out_path.parent, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp, out_path)
  return out_path


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

  def ensure_trained(self) -> Path:
    """Trains and caches the model if the file does not exist; returns its path."""
    path = Path(self.sentencepiece_model_file)
    if not path.exists():
      if self._train_texts is None:
        raise FileNotFoundError(f"SentencePiece model {path} does not exist and this "
                                "vocabulary has no training texts to build it from")
      logging.info("training a %d-piece SentencePiece vocabulary -> %s", self._train_size, path)
      train_sentencepiece(self._train_texts(), path, self._train_size)
    return path

  def _model_context(self):
    self.ensure_trained()
    return super()._model_context()

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
  """Ids of the CodeGen2 special tokens in one vocabulary (masks[k-1] is <mask_k>)."""
  eos: int
  sep: int
  eom: int
  pad: int
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
  are used when present, in order); a missing one is an error naming it. `<pad>` is used
  if present, else id 0 (padding is masked by segment ids anyway).
  """

  def __init__(self, path: str | os.PathLike):
    super().__init__(extra_ids=0)
    self._path = str(path)
    self._tok = None

  @property
  def tokenizer(self):
    if self._tok is None:
      from tokenizers import Tokenizer
      if not Path(self._path).is_file():
        raise FileNotFoundError(f"Hugging Face tokenizer file {self._path} does not exist")
      self._tok = Tokenizer.from_file(self._path)
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
    pad = tok.token_to_id(PAD)
    return SpecialIds(eos=ids[EOS], sep=ids[SEP], eom=ids[EOM],
                      pad=0 if pad is None else pad, masks=tuple(masks))

  @property
  def eos_id(self) -> int:
    return self.special_ids.eos

  @property
  def pad_id(self) -> int:
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
    def enc(x):
      return np.asarray(self._encode(x.numpy().decode("utf-8")), np.int32)
    out = tf.py_function(enc, [s], tf.int32)
    out.set_shape([None])
    return out

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    out = tf.py_function(lambda x: self._decode(x.numpy().tolist()), [ids], tf.string)
    out.set_shape([])
    return out

  def __eq__(self, other):
    return isinstance(other, HfTokenizerVocabulary) and other._path == self._path

  def __hash__(self):
    return hash(self._path)
