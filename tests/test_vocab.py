"""Vocabulary: special-token ids and byte-exact round trips of source code."""

from pathlib import Path

import pytest

from codegen2_jax.data import sources
from codegen2_jax.data import vocab as V

SAMPLES = [
    "def f(x):\n\treturn x  # tab-indented\n",
    "x = 1        # a run of spaces\n\n\n    \n",
    "s = 'héllo wörld — ünïcode ✓ 日本語 🐍'\n",
    "    leading spaces and trailing   \t\n",
    "if a:\n\t\tif b:\n\t\t\tpass\r\n",
    "numbers = 1234567890 + 3.14e-10\n",
    "",
    " ",
    "\x7f\x01 control chars",
]


def test_special_token_ids(vocab):
  sp = vocab.tokenizer
  assert sp.id_to_piece(V.PAD_ID) == "<pad>"
  assert sp.id_to_piece(V.EOS_ID) == "<|endoftext|>"
  assert sp.id_to_piece(V.SEP_ID) == "<sep>"
  assert sp.id_to_piece(V.EOM_ID) == "<eom>"
  assert sp.id_to_piece(V.mask_id(1)) == "<mask_1>"
  assert sp.id_to_piece(V.mask_id(V.NUM_SENTINELS)) == f"<mask_{V.NUM_SENTINELS}>"
  assert vocab.eos_id == V.EOS_ID
  assert vocab.encode("<mask_3>") == [V.mask_id(3)]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_byte_exact(vocab, text):
  ids = vocab.encode(text)
  assert vocab.decode(ids) == text


def test_round_trip_real_stdlib_files(vocab):
  files = [t for _, t in sources.split_docs(sources.stdlib_code(), "validation")][:40]
  assert len(files) >= 20
  for text in files:
    assert vocab.decode(vocab.encode(text)) == text


def test_tf_encode_matches_python(vocab):
  text = SAMPLES[0] + SAMPLES[2]
  assert vocab.encode_tf(text).numpy().tolist() == vocab.encode(text)


def test_decode_visible_shows_special_tokens(vocab):
  ids = vocab.encode("a = 1") + [V.EOS_ID, V.SEP_ID, V.mask_id(1)] + vocab.encode("b") + [V.EOM_ID]
  assert vocab.decode_visible(ids) == "a = 1<|endoftext|><sep><mask_1>b<eom>"


def test_missing_model_without_training_texts_fails_clearly(tmp_path):
  v = V.CodeGenVocabulary(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    v.encode("x")


def test_train_small_vocabulary(tmp_path):
  texts = [Path(sources.__file__).read_text()] * 3
  path = V.train_sentencepiece(texts, tmp_path / "v.model", vocab_size=600)
  v = V.CodeGenVocabulary(path)
  assert v.vocab_size == 600
  assert v.decode(v.encode(texts[0])) == texts[0]
