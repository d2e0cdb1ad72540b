"""Hugging Face parity: a random tiny torch CodeGenForCausalLM is the reference."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from codegen2_jax import checkpoints, convert, decoding  # noqa: E402
from codegen2_jax.data import vocab as V  # noqa: E402
from codegen2_jax.models.codegen import CodeGen, init_cache  # noqa: E402

SHAPES = [  # (n_embd, n_head, rotary_dim, n_layer)
    (64, 4, 8, 2),     # head_dim 16
    (96, 3, 32, 2),    # head_dim 32, rotary over the whole head; heads cross qkv shards
    (128, 2, 16, 1),   # head_dim 64
]


def hf_model(n_embd, n_head, rotary_dim, n_layer, vocab=101, seed=0):
  torch.manual_seed(seed)
  cfg = transformers.CodeGenConfig(vocab_size=vocab, n_positions=64, n_embd=n_embd,
                                   n_layer=n_layer, n_head=n_head, rotary_dim=rotary_dim,
                                   n_inner=None, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
                                   pad_token_id=None)
  model = transformers.CodeGenForCausalLM(cfg).eval()
  with torch.no_grad():  # HF zero-inits biases and unit-inits LayerNorm: randomise all
    for p in model.parameters():
      p.add_(torch.randn_like(p) * 0.05)
  return model


def hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


def ours_from_dir(out_dir):
  import gin
  from codegen2_jax import gin_config
  gin_config.parse([str(out_dir / "config.gin")], [])
  from codegen2_jax.models.codegen import ModelConfig
  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(out_dir / "checkpoints", abstract)
  gin.clear_config()
  return nnx.merge(graphdef, params), cfg


@pytest.mark.parametrize("shape", SHAPES)
def test_hf_to_orbax_logits_incremental_and_greedy_match(tmp_path, shape):
  ref = hf_model(*shape)
  ref.save_pretrained(tmp_path / "hf")
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o'}"]) == 0
  model, cfg = ours_from_dir(tmp_path / "o")
  ids = np.random.RandomState(0).randint(0, 101, (2, 17))
  want = hf_logits(ref, ids)
  got = np.asarray(model(jnp.asarray(ids)))
  assert np.abs(got - want).max() < 1e-4
  # incremental decoding with the KV cache, token by token
  cache = init_cache(cfg, 2, 32)
  steps = []
  for t in range(ids.shape[1]):
    logits, cache = model.decode(jnp.asarray(ids[:, t:t + 1]), jnp.full((2, 1), t), cache)
    steps.append(np.asarray(logits))
  assert np.abs(np.concatenate(steps, 1) - want).max() < 1e-4
  # greedy generation gives the same tokens
  prompt = ids[0, :5].tolist()
  ours = decoding.generate(model, [prompt], max_new_tokens=10, stop_ids=())[0]
  with torch.no_grad():
    theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False,
                          min_new_tokens=10, pad_token_id=0)[0, 5:].tolist()
  assert ours == theirs
  # and the same through the sample command, which needs no vocabulary
  from codegen2_jax import sample
  import contextlib, io
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    assert sample.main([f"--checkpoint_dir={tmp_path / 'o'}", "--temperature=0",
                        "--prompt_ids=" + ",".join(map(str, prompt)), "--max_new_tokens=10",
                        "--print_ids"]) == 0
  assert json.loads(buf.getvalue().strip().splitlines()[-1]) == theirs


def test_orbax_to_hf_round_trip_and_transformers_loads_it(tmp_path):
  ref = hf_model(*SHAPES[0])
  ref.save_pretrained(tmp_path / "hf")
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o'}"]) == 0
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={tmp_path / 'o'}",
                       f"--out_dir={tmp_path / 'hf2'}"]) == 0
  back = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf2").eval()
  ids = np.random.RandomState(1).randint(0, 101, (1, 12))
  assert np.abs(hf_logits(back, ids) - hf_logits(ref, ids)).max() < 1e-5


def test_our_trained_checkpoint_exports_to_hf(tmp_path, tiny_run, capsys):
  """A checkpoint of our own training run loads in transformers with the same logits; its
  SentencePiece vocabulary is not written as a tokenizer (and the output says so)."""
  run = tiny_run  # conftest: a 2-step run of gin/runs/test_tiny.gin, read only
  capsys.readouterr()
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={run}",
                       f"--out_dir={tmp_path / 'hf'}"]) == 0
  assert "no tokenizer written: the run's vocabulary is a SentencePiece model" in \
      capsys.readouterr().err
  assert not (tmp_path / "hf" / "tokenizer.json").exists()
  assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == V.EOS_ID
  hf = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf").eval()
  from codegen2_jax import gin_config
  from codegen2_jax.models.codegen import ModelConfig
  gin_config.parse([str(run / "config.gin")], [])
  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  _, params = checkpoints.restore_params(run / "checkpoints", abstract)
  ours = nnx.merge(graphdef, params)
  ids = np.random.RandomState(2).randint(3, 8000, (2, 20))
  assert np.abs(np.asarray(ours(jnp.asarray(ids))) - hf_logits(hf, ids)).max() < 1e-4


# The lines of Salesforce's CodeGen2-1B modeling_codegen.py around its shard count
# (CodeGenAttention.forward), with a commented-out alternative that must not count.
MODELING_CODEGEN_8 = """\
class CodeGenAttention(nn.Module):
    def forward(self, hidden_states):
        qkv = self.qkv_proj(hidden_states)
        # mp_num = 4
        # TPU-v3
        mp_num = 8
        qkv_split = qkv.reshape(qkv.shape[:-1] + (mp_num, -1))
        query = self._split_heads(query, self.num_attention_heads, self.head_dim, mp_num=mp_num)
"""


def reshard_qkv(sd, mp_num):
  """Rewrites transformers' 4-shard fused qkv weights into the `mp_num`-shard layout."""
  for name in [k for k in sd if k.endswith("qkv_proj.weight")]:
    w = sd[name]
    d = w.shape[1]
    q4 = w.reshape(4, 3, d // 4, d)
    q, v, k = (q4[:, i].reshape(d, d) for i in range(3))
    sd[name] = np.concatenate([x.reshape(mp_num, 1, d // mp_num, d) for x in (q, v, k)],
                              1).reshape(3 * d, d)
  return sd


def test_codegen2_layout_converts_without_flags_from_its_modeling_file(tmp_path, capsys):
  """A CodeGen2-style directory (8-shard qkv, modeling_codegen.py saying so, auto_map in
  config.json) converts with no --mp_num and matches the reference logits."""
  ref = hf_model(*SHAPES[0])
  hf = tmp_path / "hf"
  ref.save_pretrained(hf)
  from safetensors.numpy import load_file, save_file
  sd = reshard_qkv(load_file(str(hf / "model.safetensors")), 8)
  save_file(sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
  (hf / "modeling_codegen.py").write_text(MODELING_CODEGEN_8)
  cfg = json.loads((hf / "config.json").read_text())
  cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_codegen.CodeGenForCausalLM"}
  (hf / "config.json").write_text(json.dumps(cfg))
  capsys.readouterr()

  assert convert.main(["hf-to-orbax", f"--hf_dir={hf}", f"--out_dir={tmp_path / 'o8'}"]) == 0
  out = capsys.readouterr()
  assert f"mp_num 8, from {hf / 'modeling_codegen.py'} line 6: mp_num = 8" in out.err
  assert json.loads(out.out.strip().splitlines()[-1])["mp_num"] == 8
  model, _ = ours_from_dir(tmp_path / "o8")
  ids = np.random.RandomState(0).randint(0, 101, (1, 9))
  want = hf_logits(ref, ids)  # the untouched (4-shard) reference computes the same model
  assert np.abs(np.asarray(model(jnp.asarray(ids))) - want).max() < 1e-4

  # An --mp_num that contradicts the modeling file is refused, naming both.
  assert convert.main(["hf-to-orbax", f"--hf_dir={hf}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o4'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "--mp_num 4 contradicts" in err and "modeling_codegen.py (line 6: mp_num = 8)" in err
  assert not (tmp_path / "o4").exists()

  # Without the file the layout is the user's call, and the wrong one gives other logits.
  (hf / "modeling_codegen.py").unlink()
  assert convert.main(["hf-to-orbax", f"--hf_dir={hf}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o4'}"]) == 0
  assert "mp_num 4, from --mp_num" in capsys.readouterr().err
  wrong, _ = ours_from_dir(tmp_path / "o4")
  assert np.abs(np.asarray(wrong(jnp.asarray(ids))) - want).max() > 1e-3


def test_unknown_shape_without_modeling_file_is_refused_naming_mp_num(tmp_path, capsys):
  hf = tmp_path / "hf"
  hf_model(*SHAPES[0]).save_pretrained(hf)
  capsys.readouterr()  # transformers' progress bars
  assert convert.main(["hf-to-orbax", f"--hf_dir={hf}", f"--out_dir={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "no modeling_codegen.py" in err and "--mp_num=4" in err and "--mp_num=8" in err
  assert not (tmp_path / "o").exists()
  # A modeling file that computes mp_num rather than assigning a literal decides nothing.
  (hf / "modeling_codegen.py").write_text("mp_num = config.mp_num\nf(mp_num=mp_num)\n")
  assert convert.main(["hf-to-orbax", f"--hf_dir={hf}", f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "assigns no literal mp_num" in capsys.readouterr().err


def released_config(n_embd, n_layer, n_head):
  return {"model_type": "codegen", "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head,
          "vocab_size": 51200, "rotary_dim": 64}


@pytest.mark.parametrize("shape,mp_num,name", [
    ((2048, 16, 16), 8, "CodeGen2-1B"), ((4096, 16, 16), 8, "CodeGen2-3.7B"),
    ((4096, 32, 16), 4, "CodeGen2-7B"), ((6144, 34, 24), 4, "CodeGen-16B / CodeGen2-16B"),
    ((1024, 20, 16), 4, "CodeGen-350M"), ((4096, 33, 16), 4, "CodeGen-6B")])
def test_released_shapes_decide_mp_num(tmp_path, shape, mp_num, name):
  hf = released_config(*shape)
  got = convert.decide_mp_num(tmp_path, hf, convert.config_from_hf(hf))
  assert got.value == mp_num and f"released {name} shape" in got.source
  # an explicit value wins over a shape (a custom model may share it), with a note
  other = convert.decide_mp_num(tmp_path, hf, convert.config_from_hf(hf), 12 - mp_num)
  assert other.value == 12 - mp_num and f"the released {name} shape uses {mp_num}" in other.source


def test_modeling_file_parsing(tmp_path):
  f = tmp_path / "modeling_codegen.py"
  f.write_text("x = 1\n    mp_num  =  8   # TPU-v3\n")
  assert convert.mp_num_from_code(f) == (8, 2)
  f.write_text("#mp_num = 4\nmp_num_other = 2\nfoo(mp_num=4)\n")
  assert convert.mp_num_from_code(f) is None
  f.write_text("        mp_num = 8\n        mp_num = 4\n")
  with pytest.raises(convert.ConversionError, match="line 1: mp_num = 8, line 2: mp_num = 4"):
    convert.mp_num_from_code(f)
  # the module config.json's auto_map names comes first
  (tmp_path / "my_codegen.py").write_text("mp_num = 8\n")
  hf = {"auto_map": {"AutoModelForCausalLM": "org/repo--my_codegen.CodeGenForCausalLM"}}
  assert convert.modeling_file(tmp_path, hf) == tmp_path / "my_codegen.py"
  assert convert.modeling_file(tmp_path, {}) == f


@pytest.mark.parametrize("text,message", [
    ("{not json", "is not valid JSON (Expecting property name enclosed in double quotes at "
                  "line 1 column 2)"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"model_type": "codegen", "n_layer": 2, "n_head": 4, "vocab_size": 101}',
     "lacks 'n_embd', which a CodeGen config needs"),
    ('{"model_type": "codegen", "n_embd": "64", "n_layer": 2, "n_head": 4, '
     '"vocab_size": 101}', "'n_embd' must be a positive integer, not '64'"),
    ('{"model_type": "codegen", "n_embd": 64, "n_layer": true, "n_head": 4, '
     '"vocab_size": 101}', "'n_layer' must be a positive integer, not True"),
    ('{"model_type": "codegen", "n_embd": 64, "n_layer": 2, "n_head": 0, "vocab_size": 101}',
     "'n_head' must be a positive integer, not 0"),
    ('{"model_type": "codegen", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 101,'
     ' "rotary_dim": 7}', "rotary_dim 7 must be even and at most the head size 16"),
    ('{"model_type": "codegen", "n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 101,'
     ' "layer_norm_epsilon": "small"}', "'layer_norm_epsilon' must be a positive number"),
    ('{"n_embd": 64}', "has model_type None; expected 'codegen'"),
])
def test_malformed_config_json_is_one_line_naming_the_file(tmp_path, capsys, text, message):
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text(text)
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith(f"error: {tmp_path / 'hf' / 'config.json'}") and message in err
  assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# Tokenizers: a converted directory carries its checkpoint's, and exports it back

TOKENIZER_JSON = V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json"  # the released CodeGen2 one
TEXTS = ["def hello_world():\n    print('hi')<|endoftext|><sep><mask_1>",
         "\tif x  ==  1:\n\t\treturn 'é 中文'   # comment\n" + " " * 40 + "y<eom><mask_899>",
         "<|endoftext|>class A:\n  pass\n\n\n"]


def slow_tokenizer_files(folder):
  """vocab.json, merges.txt, added_tokens.json, special_tokens_map.json and
  tokenizer_config.json as the CodeGen2 repos ship them, derived from tokenizer.json."""
  from tokenizers import Tokenizer
  folder.mkdir(parents=True, exist_ok=True)
  tok = Tokenizer.from_file(str(TOKENIZER_JSON))
  tok.model.save(str(folder))
  added = {t["content"]: t["id"] for t in json.loads(TOKENIZER_JSON.read_text())["added_tokens"]
           if t["id"] >= 50257}
  (folder / "added_tokens.json").write_text(json.dumps(added))
  special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
             "unk_token": "<|endoftext|>"}
  (folder / "special_tokens_map.json").write_text(json.dumps(special))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      dict(special, add_prefix_space=False, tokenizer_class="GPT2Tokenizer")))


def test_tokenizer_is_built_from_vocab_and_merges_when_tokenizer_json_is_absent(tmp_path):
  from tokenizers import Tokenizer
  slow_tokenizer_files(tmp_path / "hf")
  cfg = convert.ModelConfig(vocab_size=51200)
  path, source = convert.hf_tokenizer_file(tmp_path / "hf", cfg, tmp_path)
  assert "built from" in source and "added_tokens.json" in source
  built, shipped = Tokenizer.from_file(str(path)), Tokenizer.from_file(str(TOKENIZER_JSON))
  assert built.get_vocab_size() == 51200
  for text in TEXTS:
    assert built.encode(text).ids == shipped.encode(text).ids
    assert built.decode(built.encode(text).ids, skip_special_tokens=False) == text
  # a tokenizer larger than the embedding is refused
  with pytest.raises(convert.ConversionError, match="has 51200 ids but config.json's "
                     "vocab_size is 50000"):
    convert.hf_tokenizer_file(tmp_path / "hf", convert.ModelConfig(vocab_size=50000),
                              tmp_path)
  # added ids must continue the vocabulary; a gap is refused naming the file and token
  added = json.loads((tmp_path / "hf" / "added_tokens.json").read_text())
  del added["<sep>"]
  (tmp_path / "hf" / "added_tokens.json").write_text(json.dumps(added))
  with pytest.raises(convert.ConversionError,
                     match="added_tokens.json gives '<eom>' id 50300, but it would get id 50299"):
    convert.hf_tokenizer_file(tmp_path / "hf", cfg, tmp_path)


@pytest.fixture(scope="module")
def converted_with_tokenizer(tmp_path_factory):
  """A tiny CodeGen2-vocabulary model (51,200 rows, d_model 32) with the released
  tokenizer.json in its Hugging Face directory, converted."""
  import shutil
  tmp = tmp_path_factory.mktemp("tok")
  ref = hf_model(32, 2, 8, 2, vocab=51200, seed=3)
  ref.save_pretrained(tmp / "hf")
  shutil.copy(TOKENIZER_JSON, tmp / "hf" / "tokenizer.json")
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp / 'hf'}", "--mp_num=4",
                       f"--out_dir={tmp / 'o'}"]) == 0
  return ref, tmp


def greedy(ref, ids, n, stops=(50256,)):
  with torch.no_grad():
    out = ref.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                       eos_token_id=list(stops), pad_token_id=50256)[0, len(ids):].tolist()
  end = min((out.index(s) for s in stops if s in out), default=len(out) - 1)
  return out[:end + 1]


def test_converted_dir_samples_text_with_its_own_tokenizer(converted_with_tokenizer, capsys):
  import contextlib
  import io

  from tokenizers import Tokenizer

  from codegen2_jax import sample
  ref, tmp = converted_with_tokenizer
  manifest = json.loads((tmp / "o" / "vocab" / "manifest.json").read_text())
  assert manifest["kind"] == "hf_tokenizer" and manifest["prepend_eos"] is False
  assert (tmp / "o" / "vocab" / "tokenizer.json").read_bytes() == TOKENIZER_JSON.read_bytes()

  tok = Tokenizer.from_file(str(TOKENIZER_JSON))
  prompt = "def f("
  ids = tok.encode(prompt).ids
  theirs = greedy(ref, ids, 8)
  # the check can fail: a leading <|endoftext|> would give this model other tokens
  assert greedy(ref, [50256] + ids, 8) != theirs

  def run(*flags):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
      assert sample.main([f"--checkpoint_dir={tmp / 'o'}", f"--prompt={prompt}",
                          "--temperature=0", "--max_new_tokens=8", *flags]) == 0
    return buf.getvalue()

  assert json.loads(run("--print_ids").strip().splitlines()[-1]) == theirs
  text = tok.decode([i for i in theirs if i != 50256], skip_special_tokens=False)
  assert run() == prompt + text + "\n"
  # infill in the model card's format: prefix <mask_1> suffix <|endoftext|> <sep> <mask_1>
  card = tok.encode(prompt + "<mask_1>):\n    return x<|endoftext|><sep><mask_1>").ids
  assert json.loads(run("--print_ids", "--suffix=):\n    return x").strip().splitlines()[-1]
                    ) == greedy(ref, card, 8, stops=(50300, 50256))


def test_converted_dir_runs_humaneval_generate(converted_with_tokenizer, tmp_path):
  from codegen2_jax.eval import __main__ as ev
  _, tmp = converted_with_tokenizer
  out = tmp_path / "samples.jsonl"
  assert ev.main(["humaneval", "generate", f"--checkpoint_dir={tmp / 'o'}", f"--out={out}",
                  "--limit=1", "--max_new_tokens=4", "--batch_size=1"]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["task_id"] for r in rows] == ["HumanEval/0"]
  assert isinstance(rows[0]["completion"], str)


def test_orbax_to_hf_writes_the_runs_tokenizer(converted_with_tokenizer, tmp_path, capsys):
  ref, tmp = converted_with_tokenizer
  capsys.readouterr()
  assert convert.main(["orbax-to-hf", f"--checkpoint_dir={tmp / 'o'}",
                       f"--out_dir={tmp_path / 'hf2'}"]) == 0
  assert "wrote tokenizer.json, tokenizer_config.json, special_tokens_map.json" in \
      capsys.readouterr().err
  config = json.loads((tmp_path / "hf2" / "config.json").read_text())
  assert config["eos_token_id"] == config["bos_token_id"] == 50256
  auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf2")
  from tokenizers import Tokenizer
  original = Tokenizer.from_file(str(TOKENIZER_JSON))
  for text in TEXTS:
    assert auto(text, add_special_tokens=True)["input_ids"] == original.encode(text).ids
  assert auto.eos_token_id == 50256
  back = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf2").eval()
  ids = np.random.RandomState(1).randint(0, 51200, (1, 12))
  assert np.abs(hf_logits(back, ids) - hf_logits(ref, ids)).max() < 1e-5


def test_bad_inputs_are_refused_with_a_reason(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'empty'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "no config.json" in capsys.readouterr().err

  ref = hf_model(*SHAPES[0])
  ref.save_pretrained(tmp_path / "hf")
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())

  bad = dict(cfg, model_type="gpt2")
  (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "model_type 'gpt2'" in capsys.readouterr().err

  bad = dict(cfg, n_inner=100)  # shapes no longer match the weights
  (tmp_path / "hf" / "config.json").write_text(json.dumps(bad))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=4",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err
  assert "mlp.fc_in.weight" in err and "(100, 64)" in err

  (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
  assert convert.main(["hf-to-orbax", f"--hf_dir={tmp_path / 'hf'}", "--mp_num=3",
                       f"--out_dir={tmp_path / 'o'}"]) == 2
  assert "mp_num 3 does not divide the model width 64" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()  # nothing half-written
