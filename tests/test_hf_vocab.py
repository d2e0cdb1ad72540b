"""A vocabulary over a Hugging Face tokenizer.json (as CodeGen2 ships one)."""

import numpy as np
import pytest
import seqio
import tensorflow as tf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codegen2_jax.data import files, objectives, registry
from codegen2_jax.data import vocab as V

CODE = ["def add(a, b):\n\treturn a + b  # sum\n", "class A:\n    x = 'héllo'\n" * 3,
        "for i in range(10):\n    print(i)\n"] * 20


def make_tokenizer(path, specials):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CODE, trainer)
  tok.save(str(path))
  return path


SPECIALS = ["<unused>", "<|endoftext|>", "<mask_1>", "<mask_2>", "<mask_3>", "<sep>", "<eom>"]


def test_special_ids_round_trip_and_tf(tmp_path):
  v = V.HfTokenizerVocabulary(make_tokenizer(tmp_path / "tokenizer.json", SPECIALS))
  ids = v.special_ids
  assert (ids.eos, ids.mask(1), ids.mask(3), ids.sep, ids.eom) == (1, 2, 4, 5, 6)
  assert len(ids.masks) == 3
  for text in CODE[:3]:
    assert v.decode(v.encode(text)) == text
    assert v.encode_tf(tf.constant(text)).numpy().tolist() == v.encode(text)
  assert v.encode("<mask_2>") == [ids.mask(2)]


def test_missing_special_token_is_named(tmp_path):
  v = V.HfTokenizerVocabulary(make_tokenizer(tmp_path / "t.json", ["<|endoftext|>", "<sep>"]))
  with pytest.raises(ValueError, match="'<eom>'"):
    v.special_ids


def test_task_with_hf_vocabulary_uses_its_special_ids(tmp_path):
  v = V.HfTokenizerVocabulary(make_tokenizer(tmp_path / "tokenizer.json", SPECIALS))
  (tmp_path / "src").mkdir()
  for i, text in enumerate(CODE[:6]):
    (tmp_path / "src" / f"f{i}.py").write_text(text * 4)
  task = registry.register_task("hf_vocab_test", files.tree_source(tmp_path / "src", [".py"],
                                                                   "hf test"),
                                objective=objectives.single_objective("span_corruption"),
                                vocabulary=v)
  ids = v.special_ids
  exs = list(task.get_dataset({"targets": 512}, split="train", shuffle=False)
             .as_numpy_iterator())
  assert exs
  for ex in exs:
    t = ex["targets"].tolist()
    sep = t.index(ids.sep)
    assert t[sep - 1] == ids.eos and t[-1] == ids.eom
    body, tail = t[:sep - 1], t[sep + 1:]
    assert tail[0] == ids.mask(1)
    # put the spans back and decode: a chunk of the original file
    spans, i = {}, 0
    while i < len(tail):
      end = tail.index(ids.eom, i + 1)
      spans[tail[i]] = tail[i + 1:end]
      i = end + 1
    doc = [x for tok in body for x in (spans[tok] if tok in spans else [tok])]
    assert any(v.decode(doc) in text * 4 for text in CODE[:6])
