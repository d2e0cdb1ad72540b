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


# ----------------------------------------------------------------------------------------
# A run's own copy of its vocabulary (MODEL_DIR/vocab/)


def test_save_and_load_a_run_vocabulary(tmp_path, vocab):
  import hashlib
  import json
  for v, kind, name in ((vocab, "sentencepiece", "spm.model"),
                        (V.codegen2_tokenizer(), "hf_tokenizer", "tokenizer.json")):
    run = tmp_path / kind
    assert V.load_from_run(run) is None
    out = V.save_to_run(v, run, prepend_eos=kind == "sentencepiece")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", name]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"kind": kind, "file": name, "prepend_eos": kind == "sentencepiece",
                        "sha256": hashlib.sha256((out / name).read_bytes()).hexdigest()}
    got = V.load_from_run(run)
    assert type(got) is type(v) and got.prepend_eos == (kind == "sentencepiece")
    text = SAMPLES[0] + SAMPLES[2] + "<|endoftext|>"
    assert got.encode(text) == v.encode(text) and got.vocab_size == v.vocab_size
    assert V.special_ids(got) == V.special_ids(v)


def test_a_damaged_run_vocabulary_is_named(tmp_path, vocab):
  V.save_to_run(vocab, tmp_path)
  model = tmp_path / "vocab" / "spm.model"
  model.write_bytes(model.read_bytes()[:-1] + b"x")
  with pytest.raises(V.RunVocabularyError, match=f"{model} has sha256 .* not the"):
    V.load_from_run(tmp_path)
  model.unlink()
  with pytest.raises(V.RunVocabularyError, match=f"{model} is missing"):
    V.load_from_run(tmp_path)
  (tmp_path / "vocab" / "manifest.json").write_text('{"kind": "bpe"}')
  with pytest.raises(V.RunVocabularyError, match="manifest.json lacks file, sha256"):
    V.load_from_run(tmp_path)


def test_record_in_run_copies_once_then_checks(tmp_path, vocab):
  from codegen2_jax.data import registry
  sha = V.record_in_run(vocab, tmp_path)
  assert V.read_manifest(tmp_path)["sha256"] == sha
  assert V.record_in_run(vocab, tmp_path) == sha  # a resume with the same vocabulary
  other = tmp_path / "other"
  assert V.record_in_run(V.codegen2_tokenizer(), other, write=False) is not None
  assert V.read_manifest(other) is None  # write=False (not the primary host): no copy
  with pytest.raises(V.RunVocabularyError) as e:
    V.record_in_run(registry.FamilyVocabulary("stack"), tmp_path)  # CodeGen2's tokenizer
  msg = str(e.value)
  assert "\n" not in msg and str(tmp_path / "vocab" / "spm.model") in msg
  assert "tokenizer.json" in msg and "--gin.registry.family_vocabulary.stack=" in msg


def test_model_rows_against_the_vocabulary(caplog):
  with pytest.raises(ValueError, match="51200 pieces but ModelConfig.vocab_size is 8192"):
    V.check_model_rows(51200, 8192)
  V.check_model_rows(8192, 8192)
  V.check_model_rows(51200, 51200 + 128)  # padded to a multiple: fine
  assert not caplog.records
  V.check_model_rows(8192, 51200)
  assert [r.getMessage() for r in caplog.records] == [
      "the vocabulary has 8192 pieces but ModelConfig.vocab_size is 51200: 43008 embedding "
      "rows will never be used"]
