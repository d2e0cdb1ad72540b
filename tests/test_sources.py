"""File sources in the real formats: parquet (The Stack), jsonl(.zst) (The Pile), trees."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import zstandard

from codegen2_jax.data import files


def _texts(ds):
  return sorted(ex["text"].decode() for ex in ds.as_numpy_iterator())


def _all(source, **kw):
  return sorted(_texts(source.get_dataset("train", shuffle=False, **kw))
                + _texts(source.get_dataset("validation", shuffle=False, **kw)))


@pytest.fixture
def stack_dir(tmp_path):
  root = tmp_path / "stack"
  (root / "python").mkdir(parents=True)
  docs = [f"def f{i}():\n    return {i}\n" for i in range(30)]
  for shard in range(3):
    table = pa.table({"content": docs[shard * 10:(shard + 1) * 10],
                      "size": list(range(10))})
    pq.write_table(table, root / "python" / f"data-{shard:05d}-of-00003.parquet")
  # bad records: empty, None, binary with NUL, invalid UTF-8 in a binary column
  bad = pa.table({"content": pa.array([b"", None, b"\x00\x01binary", b"ok \xff\xfe bytes\n"],
                                      type=pa.binary())})
  pq.write_table(bad, root / "python" / "data-bad.parquet")
  return root, docs


def test_parquet_reads_every_document_and_counts_bad_ones(stack_dir, caplog):
  root, docs = stack_dir
  src = files.parquet_source(root / "python", "stack python")
  import logging
  with caplog.at_level(logging.INFO):
    got = _all(src)
  assert got == sorted(docs + ["ok \ufffd\ufffd bytes\n"])
  assert "1 with invalid UTF-8 (replaced), 2 empty, 1 binary" in caplog.text


def test_two_hosts_see_disjoint_shards_whose_union_is_the_whole(stack_dir):
  root, docs = stack_dir
  src = files.parquet_source(root / "python", "stack python")
  a = _all(src, shard_info=seqio.ShardInfo(0, 2))
  b = _all(src, shard_info=seqio.ShardInfo(1, 2))
  assert a and b and not set(a) & set(b)
  assert sorted(a + b) == _all(src)


def test_jsonl_zst_pile_layout(tmp_path, caplog):
  lines = [json.dumps({"text": f"document {i}\nwith two lines", "meta": {"pile_set_name": "Pile-CC"}})
           for i in range(20)]
  raw = "\n".join(lines).encode() + b"\n{not json}\n" + b'{"meta": {}}\n' + \
      b'{"text": "bad \xff utf8"}\n' + b"\n"
  (tmp_path / "pile").mkdir()
  with open(tmp_path / "pile" / "00.jsonl.zst", "wb") as f:
    f.write(zstandard.ZstdCompressor().compress(raw))
  (tmp_path / "pile" / "01.jsonl").write_text(json.dumps({"text": "plain jsonl"}) + "\n")
  import logging
  with caplog.at_level(logging.INFO):
    got = _all(files.jsonl_source(tmp_path / "pile", "pile"))
  assert got == sorted([f"document {i}\nwith two lines" for i in range(20)]
                       + ["bad \ufffd utf8", "plain jsonl"])
  assert "2 unparsable lines skipped" in caplog.text


def test_local_tree_filters_extensions_and_skips_binary_and_empty(tmp_path):
  (tmp_path / "src" / "pkg").mkdir(parents=True)
  (tmp_path / "src" / "a.py").write_text("print('a')\n")
  (tmp_path / "src" / "pkg" / "b.rs").write_text("fn main() {}\n")
  (tmp_path / "src" / "pkg" / "c.txt").write_text("not code\n")
  (tmp_path / "src" / "empty.py").write_text("")
  (tmp_path / "src" / "blob.py").write_bytes(b"\x00\x00\x7fELF")
  got = _all(files.tree_source(tmp_path / "src", [".py", ".rs"], "my code"))
  assert got == ["fn main() {}\n", "print('a')\n"]


def test_missing_path_names_the_task_and_the_path(tmp_path, monkeypatch):
  import tasks  # noqa: F401
  monkeypatch.setenv("CODEGEN2_STACK_DIR", str(tmp_path / "nowhere"))
  task = seqio.get_mixture_or_task("stack_rust")
  with pytest.raises(FileNotFoundError) as e:
    task.get_dataset({"targets": 128}, split="train", shuffle=False)
  assert "stack_rust" in str(e.value) and str(tmp_path / "nowhere" / "rust") in str(e.value)


def test_stack_task_end_to_end_through_gin_setting(stack_dir, vocab):
  import gin
  import tasks  # noqa: F401
  from codegen2_jax.data import objectives as O
  root, docs = stack_dir
  gin.parse_config(f"tasks.paths.data_dirs.stack = '{root}'")
  try:
    task = seqio.get_mixture_or_task("stack_python")
    exs = list(task.get_dataset({"targets": 128}, split="train", shuffle=False)
               .as_numpy_iterator())
  finally:
    gin.clear_config()
  assert len(exs) >= 25
  assert {int(e["objective"][0]) for e in exs} <= {O.CAUSAL_LM, O.SPAN_CORRUPTION}
  assert all(b"parquet" in e["source"] for e in exs)
