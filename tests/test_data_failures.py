"""Data sources that fail well: damaged files, symlinked trees, copies across splits, huge
documents, and errors that end the process (issue 16)."""

import gzip
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gin
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from codegen2_jax.data import files, pipeline

REPO = Path(__file__).resolve().parent.parent


def _read(source, split=None):
  """Every text of `source` (both splits unless one is named), through the iterator the
  trainer and the data tools use."""
  out = []
  for s in [split] if split else ["train", "validation"]:
    ds = source.get_dataset(s, shuffle=False)
    out += [ex["text"].decode() for ex in pipeline.numpy_iterator(ds)]
  return sorted(out)


def _pile(tmp_path, suffix, compress):
  lines = [json.dumps({"text": f"document {i} " + "words " * 50}) for i in range(400)]
  d = tmp_path / "pile"
  d.mkdir(exist_ok=True)
  data = compress("\n".join(lines).encode() + b"\n")
  (d / f"00.{suffix}").write_bytes(data)
  (d / "01.jsonl").write_text(json.dumps({"text": "an intact file"}) + "\n")
  return d, d / f"00.{suffix}", data


@pytest.mark.parametrize("suffix,compress", [
    ("jsonl.zst", zstandard.ZstdCompressor().compress), ("jsonl.gz", gzip.compress)])
def test_truncated_compressed_file_is_an_error_naming_it(tmp_path, suffix, compress):
  d, path, data = _pile(tmp_path, suffix, compress)
  path.write_bytes(data[:len(data) * 2 // 3])
  with pytest.raises(files.CorruptFileError, match=f"{path} is truncated"):
    _read(files.jsonl_source(d, "pile"))


def test_corrupt_zst_is_an_error_and_the_gin_switch_skips_and_counts_it(tmp_path, caplog):
  d, path, data = _pile(tmp_path, "jsonl.zst", zstandard.ZstdCompressor().compress)
  bad = bytearray(data)
  bad[len(bad) // 2:len(bad) // 2 + 64] = bytes(64)
  path.write_bytes(bytes(bad))
  with pytest.raises(files.CorruptFileError, match=f"{path} is not a valid zstandard"):
    _read(files.jsonl_source(d, "pile"))
  gin.parse_config("read_settings.skip_corrupt_files = True")
  try:
    with caplog.at_level(logging.WARNING):
      got = _read(files.jsonl_source(d, "pile"))
  finally:
    gin.clear_config()
  assert "an intact file" in got
  assert "skipped a corrupt file of pile" in caplog.text and "(1 skipped so far" in caplog.text
  assert str(path) in caplog.text


def test_intact_multi_frame_zst_reads_every_line(tmp_path):
  frames = [zstandard.ZstdCompressor().compress(
      "".join(json.dumps({"text": f"frame {f} line {i}"}) + "\n" for i in range(50)).encode())
      for f in range(3)]
  (tmp_path / "p").mkdir()
  (tmp_path / "p" / "a.jsonl.zst").write_bytes(b"".join(frames))
  got = _read(files.jsonl_source(tmp_path / "p", "pile"))
  assert got == sorted(f"frame {f} line {i}" for f in range(3) for i in range(50))


def test_truncated_parquet_is_an_error_naming_it(tmp_path):
  (tmp_path / "s").mkdir()
  path = tmp_path / "s" / "a.parquet"
  pq.write_table(pa.table({"content": [f"x = {i}\n" for i in range(100)]}), path)
  path.write_bytes(path.read_bytes()[:300])
  with pytest.raises(files.CorruptFileError, match=f"{path} is not a readable parquet"):
    _read(files.parquet_source(tmp_path / "s", "stack"))


def test_tree_never_follows_directory_symlinks_and_reads_each_file_once(tmp_path):
  root, outside = tmp_path / "tree", tmp_path / "outside"
  (root / "lib" / "pkg").mkdir(parents=True)
  outside.mkdir()
  (outside / "secret.py").write_text("print('outside the tree')\n")
  (root / "lib" / "a.py").write_text("print('a')\n")
  (root / "lib" / "pkg" / "b.py").write_text("print('b')\n")
  os.symlink("lib", root / "lib64")                     # lib64 -> lib
  os.symlink("..", root / "lib" / "pkg" / "up")          # a loop
  os.symlink(outside, root / "out")                     # out of the tree
  os.symlink("a.py", root / "lib" / "alias.py")          # a second path to a.py
  os.symlink("missing.py", root / "lib" / "broken.py")   # a broken link
  src = files.tree_source(root, [".py"], "my code")
  assert [os.path.relpath(p, root) for p in src.files()] == ["lib/a.py", "lib/pkg/b.py"]
  assert _read(src) == ["print('a')\n", "print('b')\n"]


def test_copies_of_a_document_never_land_in_both_splits(tmp_path):
  texts = [f"def f{i}():\n    return {i}\n" for i in range(300)]
  for copy in ("a", "b/c"):
    (tmp_path / "t" / copy).mkdir(parents=True)
    for i, t in enumerate(texts):
      (tmp_path / "t" / copy / f"m{i}.py").write_text(t)
  src = files.tree_source(tmp_path / "t", [".py"], "copies")  # one in 50 held out
  train, validation = _read(src, "train"), _read(src, "validation")
  assert validation and not set(train) & set(validation)
  assert len(train) + len(validation) == 600


def test_a_huge_document_comes_in_pieces_that_rebuild_it(tmp_path):
  (tmp_path / "t").mkdir()
  text = "".join(f"line {i} " + "x" * (i % 50) + "\n" for i in range(3000))  # ~ 100k chars
  (tmp_path / "t" / "big.py").write_text(text)
  gin.parse_config("read_settings.max_document_chars = 4096")
  try:
    src = files.tree_source(tmp_path / "t", [".py"], "big")
    split = "validation" if files.held_out(text, 50) else "train"
    exs = list(pipeline.numpy_iterator(src.get_dataset(split, shuffle=False)))
  finally:
    gin.clear_config()
  pieces = [ex["text"].decode() for ex in exs]
  assert "".join(pieces) == text and len(pieces) >= len(text) // 4096
  assert all(len(p) <= 4096 for p in pieces) and all(p.endswith("\n") for p in pieces)
  assert exs[1]["source"].decode().endswith("big.py#1")


# --- Through the entry point, in fresh processes.

def _cli(args, env_extra, timeout):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _cli_many(args, env_extra, timeout, runs, at_once=2):
  """(returncode or 'timed out', stderr) of `runs` fresh processes, `at_once` at a time."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  out = []
  for _ in range(0, runs, at_once):
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(at_once)]
    procs = [subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, text=True,
                              stdout=subprocess.DEVNULL, stderr=log) for log in logs]
    for p, log in zip(procs, logs):
      try:
        rc = p.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = "timed out"
      log.seek(0)
      out.append((rc, log.read()))
      log.close()
  return out


def test_missing_column_exits_with_the_error_every_time(tmp_path):
  # Before the fix the process printed the error and then often hung
  # at interpreter exit (tf.data threads inside Python generators; see
  # pipeline.numpy_iterator). Three fresh processes at once, each must end quickly (ten,
  # two at a time, cost over two minutes of the suite).
  root = tmp_path / "stack"
  (root / "python").mkdir(parents=True)
  for i in range(3):
    pq.write_table(pa.table({"text": [f"def f{j}(): pass\n" for j in range(50)]}),
                   root / "python" / f"d{i}.parquet")
  runs = _cli_many(["-m", "codegen2_jax.data", "inspect", "--mixture=stack_python", "--n=2"],
                   {"CODEGEN2_STACK_DIR": str(root)}, timeout=150, runs=3, at_once=3)
  want = (f"error: {root / 'python' / 'd0.parquet'} has no column 'content' "
          "(columns: ['text'])")
  bad = [(rc, err[-500:]) for rc, err in runs
         if rc != 1 or err.strip().splitlines()[-1] != want]
  assert not bad


USER_MODULE = '''
from codegen2_jax.data import files, registry
registry.register_task("huge_line", files.tree_source({root!r}, [".js"], "minified js"))
'''

# The child's own peak RSS is VmHWM: ru_maxrss (RUSAGE_SELF) carries the peak of the
# process that forked it across exec, so under pytest it reported pytest's own peak.
MEASURE = '''
import runpy, sys
sys.argv = ["codegen2_jax.data"] + sys.argv[1:]
try:
  runpy.run_module("codegen2_jax.data", run_name="__main__")
except SystemExit as e:
  code = e.code
with open("/proc/self/status") as f:
  print("PEAK_RSS_KB", next(l.split()[1] for l in f if l.startswith("VmHWM:")), file=sys.stderr)
sys.exit(code)
'''


def test_a_50mb_single_line_file_streams_through_in_bounded_memory(tmp_path, vocab):
  (tmp_path / "code").mkdir()
  block = "".join(f"f{i}(x{i % 89});" for i in range(997))
  line = "var a=1;" + block * (52_000_000 // len(block))
  while files.held_out(line, 50):  # keep it in the train split that inspect reads
    line += " "
  (tmp_path / "code" / "app.min.js").write_text(line)
  assert len(line) > 50_000_000
  (tmp_path / "huge_mod.py").write_text(USER_MODULE.format(root=str(tmp_path / "code")))
  r = _cli(["-c", MEASURE, "inspect", "--mixture=huge_line", "--module=huge_mod", "--n=2",
            "--json"], {"PYTHONPATH": str(tmp_path)}, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  exs = [json.loads(x) for x in r.stdout.strip().splitlines()]
  assert len(exs) == 2 and all(ex["source"].split("#")[0].endswith("app.min.js") for ex in exs)
  # Tokenizing loaded SentencePiece in tensorflow-text's op, which logs INFO lines unless
  # data.tf_runtime turned them off.
  assert "LOG(INFO)" not in r.stderr, r.stderr[-2000:]
  rss_gb = int(r.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024 / 1e9
  # Issue 16: under 2 GB (before streaming, this file drove the process to 19 GB and the
  # OOM killer). Measured 1.11 GB, of which about 1.02 GB is the same command on a 200 KB
  # file (TensorFlow, jax, seqio loaded).
  assert rss_gb < 2.0, f"peak RSS {rss_gb:.2f} GB"


def test_sentencepiece_info_lines_are_off_and_their_switch_is_the_real_one(vocab, capfd):
  import itertools

  import tensorflow_text as tf_text
  from sentencepiece import sentencepiece_model_pb2

  from codegen2_jax.data import tf_runtime
  model = sentencepiece_model_pb2.ModelProto.FromString(
      Path(vocab.sentencepiece_model_file).read_bytes())
  count = itertools.count()

  def load_and_tokenize():
    # A model the op has not seen (kernels are cached by model), so that it loads one.
    model.trainer_spec.model_prefix = f"copy{next(count)}"
    capfd.readouterr()
    tokenizer = tf_text.SentencepieceTokenizer(model=model.SerializeToString())
    assert tokenizer.tokenize("def f(): pass").shape[0]
    return capfd.readouterr().err

  assert "LOG(INFO)" not in load_and_tokenize()
  # The variable set at import is the one those lines test: at INFO they come back.
  assert tf_runtime.set_sentencepiece_op_log_level(tf_runtime.SPM_INFO)
  try:
    assert "LOG(INFO) precompiled_charsmap is empty" in load_and_tokenize()
  finally:
    assert tf_runtime.set_sentencepiece_op_log_level(tf_runtime.SPM_WARNING)
  assert "LOG(INFO)" not in load_and_tokenize()
  with pytest.raises(ValueError, match="0..3"):
    tf_runtime.set_sentencepiece_op_log_level(4)
