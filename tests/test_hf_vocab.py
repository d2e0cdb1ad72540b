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


# ----------------------------------------------------------------------------------------
# The bundled CodeGen2 tokenizer

CG2_SAMPLES = [
    "def hello_world():\n    print('hi')<|endoftext|><sep><mask_1>",
    "x = 1        # eight spaces\n\t\t\tif a:\n\t\t\t\t\t\t\t\t\t\t\tpass\r\n",
    " " * 40 + "deep\n" + "\t" * 12 + "tabs\n  \t \t mixed  \n",
    "s = 'héllo wörld — ünïcode ✓ 日本語 🐍'\n",
    "a<eom>b<mask_899> <mask_1>  <|endoftext|>\n<sep>",
    "if x != 0: print('!!')\n",
    "\x7f\x01 control chars",
    "",
    " ",
]


@pytest.fixture(scope="module")
def cg2():
  return V.codegen2_tokenizer()


def test_bundled_tokenizer_is_the_released_file():
  import hashlib
  data = (V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json").read_bytes()
  notice = (V.CODEGEN2_TOKENIZER_DIR / "NOTICE").read_text()
  assert hashlib.sha256(data).hexdigest() in notice
  assert "Apache License" in (V.CODEGEN2_TOKENIZER_DIR / "LICENSE").read_text()


def test_codegen2_special_ids(cg2):
  ids = cg2.special_ids
  assert (ids.eos, ids.sep, ids.eom, ids.pad) == (50256, 50299, 50300, None)
  assert len(ids.masks) == 899
  assert all(ids.mask(k) == 51200 - k for k in range(1, 900))
  assert cg2.vocab_size == 51200 and cg2.eos_id == 50256 and cg2.pad_id is None
  # The example of the tokenizer's README (its model card's infill tokens).
  assert cg2.encode(CG2_SAMPLES[0]) == [4299, 23748, 62, 6894, 33529, 198, 50284, 4798,
                                        10786, 5303, 11537, 50256, 50299, 51199]


@pytest.mark.parametrize("text", CG2_SAMPLES)
def test_codegen2_matches_the_tokenizers_library_and_round_trips(cg2, text):
  ref = Tokenizer.from_file(str(V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json"))
  ids = cg2.encode(text)
  assert ids == ref.encode(text, add_special_tokens=False).ids
  assert cg2.decode_visible(ids) == text
  assert cg2.encode_tf(tf.constant(text)).numpy().tolist() == ids
  if "<|endoftext|>" not in text:  # decode stops at the first EOS, like seqio's
    assert cg2.decode(ids) == text
    assert cg2.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == text


def test_decode_tf_cuts_at_eos_instead_of_padding_with_id_0(cg2):
  # seqio would write pad_id after EOS; id 0 is '!' here, so that would add '!!'.
  ids = cg2.encode("x = 1") + [cg2.eos_id] + cg2.encode("junk")
  assert cg2.decode_tf(tf.constant(ids, tf.int32)).numpy().decode() == "x = 1<|endoftext|>"
  assert cg2.decode(ids) == "x = 1<|endoftext|>"


def _tree_task(tmp_path, name, texts, vocabulary, objective="causal_lm"):
  src = tmp_path / name
  src.mkdir()
  for i, text in enumerate(texts):
    (src / f"f{i}.py").write_text(text)
  return registry.register_task(name, files.tree_source(src, [".py"], name),
                                objective=objectives.single_objective(objective),
                                vocabulary=vocabulary)


def test_seqio_task_tokenizes_like_the_tokenizers_library(tmp_path, cg2):
  ref = Tokenizer.from_file(str(V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json"))
  texts = CG2_SAMPLES[1:7]
  task = _tree_task(tmp_path, "cg2_seqio_path", texts, "stack")  # the family's default
  got = sorted(ex["targets"].tolist() for ex in
               task.get_dataset({"targets": 512}, split="train", shuffle=False)
               .as_numpy_iterator())
  want = sorted(ref.encode(t, add_special_tokens=False).ids + [50256] for t in texts)
  assert got == want


# ----------------------------------------------------------------------------------------
# Which vocabulary each task family uses (gin: registry.family_vocabulary)


def _vocab_of(name):
  voc = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  return getattr(voc, "resolved", voc)


CG2_TASKS = ["stack_python", "stack_rust", "stack_code", "pile", "stack_code_pile",
             "stack_code_subset", "stack_go_subset"]
SPM_TASKS = ["stdlib_code", "stdlib_prose", "stdlib_demo", "stdlib_code_subset"]


def test_stack_and_pile_use_codegen2_by_default_and_gin_switches_them(tmp_path):
  import gin
  import tasks  # noqa: F401
  cg2, spm = V.codegen2_tokenizer(), registry.default_vocabulary()
  gin.clear_config()
  assert all(_vocab_of(n) is cg2 for n in CG2_TASKS)
  assert all(_vocab_of(n) is spm for n in SPM_TASKS)
  try:
    gin.parse_config("registry.family_vocabulary.stack = 'stdlib_spm'")
    assert _vocab_of("stack_python") is spm and _vocab_of("stack_code_subset") is spm
    assert _vocab_of("pile") is cg2
    with pytest.raises(ValueError, match="same vocabulary"):  # stack (spm) + pile (cg2)
      seqio.get_mixture_or_task("stack_code_pile")._check_compatible_features()
    own = tmp_path / "my_tokenizer.json"
    own.write_bytes((V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json").read_bytes())
    gin.parse_config(f"registry.family_vocabulary.stdlib = '{own}'")
    v = _vocab_of("stdlib_code")
    assert isinstance(v, V.HfTokenizerVocabulary) and v.tokenizer_file == str(own)
    assert v.encode("def f(): pass") == cg2.encode("def f(): pass")
    gin.parse_config("registry.family_vocabulary.pile = 'gpt2'")
    with pytest.raises(ValueError, match="unknown vocabulary 'gpt2'.*'codegen2'"):
      _vocab_of("pile").vocab_size
  finally:
    gin.clear_config()
  assert _vocab_of("stack_python") is cg2


def test_run_files_and_lesson_arms_pick_their_vocabulary():
  import glob

  from codegen2_jax import gin_config
  import tasks  # noqa: F401
  from codegen2_jax import trainer  # noqa: F401
  cg2, spm = V.codegen2_tokenizer(), registry.default_vocabulary()
  want = {**{f: cg2 for f in glob.glob("gin/runs/pretrain_*.gin") + glob.glob("gin/lessons/*.gin")
             if not f.endswith("base.gin")},
          **{f: spm for f in glob.glob("gin/lessons/cpu/*.gin") + ["gin/runs/demo_cpu.gin"]
             if not f.endswith("base.gin")}}
  assert len(want) >= 4 + 10 + 10 + 1
  try:
    for f, v in want.items():
      gin_config.parse([f], [])
      assert _vocab_of(gin_config.macro("MIXTURE_OR_TASK_NAME")) is v, f
  finally:
    import gin
    gin.clear_config()


# ----------------------------------------------------------------------------------------
# Id 0 is a token ('!'), never padding


def test_token_id_0_keeps_its_tokens_and_loss_weights_through_packing(tmp_path, cg2):
  from codegen2_jax.data import pipeline
  from codegen2_jax.eval import perplexity
  texts = ["x = 1!\nif not!x: y = 2!\n", "!", "!important\n" * 3]
  assert all(0 in cg2.encode(t) for t in texts)
  want = sorted(cg2.encode(t) + [cg2.eos_id] for t in texts)
  name = "cg2_bang"
  _tree_task(tmp_path, name, texts, cg2)
  for pack in (True, False):
    ds = pipeline.host_dataset(name, 128, 1, shuffle=False, num_epochs=1, pack=pack,
                               track_epochs=False)
    got = []
    for batch in ds.as_numpy_iterator():
      for row in range(batch["targets"].shape[0]):
        seg = batch["segment_ids"][row]
        for s in range(1, seg.max() + 1):
          idx = np.nonzero(seg == s)[0]
          got.append(batch["targets"][row][idx].tolist())
          assert (batch["loss_weights"][row][idx] == 1).all()
          assert batch["inputs"][row][idx[0]] == cg2.eos_id
          assert batch["inputs"][row][idx[1:]].tolist() == got[-1][:-1]
        assert (batch["loss_weights"][row][seg == 0] == 0).all()
    assert sorted(got) == want, pack
  # The evaluation rows (perplexity) count every token of every document once.
  docs = tf.data.Dataset.from_tensor_slices({"text": texts})
  rows = list(perplexity.causal_rows(docs, cg2, 32, 2).as_numpy_iterator())
  assert sum(int(b["loss_weights"].sum()) for b in rows) == sum(len(w) for w in want)
  bangs = sum(int(((b["targets"] == 0) & (b["segment_ids"] > 0)).sum()) for b in rows)
  assert bangs == sum(w.count(0) for w in want)


def test_generated_id_0_is_returned_not_dropped(cg2):
  import jax.numpy as jnp
  from flax import nnx

  from codegen2_jax import decoding
  from codegen2_jax.models.codegen import CodeGen, ModelConfig
  cfg = ModelConfig(vocab_size=51200, d_model=32, n_layers=1, n_heads=2, head_dim=16,
                    rotary_dim=8, d_ff=64, max_len=64)
  model = nnx.jit(lambda: CodeGen(cfg, nnx.Rngs(0)))()  # one compile, not one per op
  model.lm_head_bias.value = jnp.zeros(51200).at[0].set(1e4)  # always '!'
  # (4 new tokens after a 2..16-token prompt in both calls: one compilation)
  assert decoding.generate(model, [[cg2.eos_id, 87]], 4, stop_ids=(cg2.eos_id,))[0] == [0] * 4
  assert decoding.complete(model, cg2, "x = ", max_new_tokens=4) == "!!!!"


# ----------------------------------------------------------------------------------------
# Tokenizing in the task pipeline: batched (vocab.tokenize_documents), as seqio would


@pytest.mark.parametrize("kind", ["codegen2", "stdlib_spm"])
def test_batched_tokenizing_gives_seqios_tokens_in_order(kind, cg2, vocab):
  import gin
  voc = cg2 if kind == "codegen2" else vocab
  features = {"targets": seqio.Feature(voc, add_eos=False)}
  texts = CG2_SAMPLES + ["", "\n" * 3 + CODE[1] * 40]
  ds = tf.data.Dataset.from_tensor_slices({
      "targets": texts, "source": [f"doc{i}" for i in range(len(texts))],
      "epoch_end": [i == len(texts) - 1 for i in range(len(texts))]})
  want = list(seqio.preprocessors.tokenize(ds, features, copy_pretokenized=False)
              .as_numpy_iterator())
  with gin.unlock_config():
    gin.bind_parameter("vocab.tokenize_documents.batch_size", 3)  # a partial last batch
  try:
    out = V.tokenize_documents(ds, features)
    got = list(out.as_numpy_iterator())
  finally:
    gin.clear_config()
  assert out.element_spec["targets"] == tf.TensorSpec([None], tf.int32)
  assert [g["source"] for g in got] == [w["source"] for w in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    np.testing.assert_array_equal(g["targets"], w["targets"])
    assert g["epoch_end"] == w["epoch_end"]
  assert got[0]["targets"].size > 0 and got[len(CG2_SAMPLES)]["targets"].size == 0
  if kind == "codegen2":  # the batch path is the tokenizers library's own encoding
    ref = Tokenizer.from_file(str(V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json"))
    assert [g["targets"].tolist() for g in got] == [
        ref.encode(t, add_special_tokens=False).ids for t in texts]
