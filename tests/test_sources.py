"""File sources in the real formats: parquet (The Stack), jsonl(.zst) (The Pile), trees."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf
import zstandard

from codegen2_jax.data import files


def _texts(ds):
  return sorted(ex["text"].decode() for ex in ds.as_numpy_iterator())


def _all(source, **kw):
  return sorted(_texts(source.get_dataset("train", shuffle=False, **kw))
                + _texts(source.get_dataset("validation", shuffle=False, **kw)))


def _licences(n, stars=("MIT",), issues=None, forks=()):
  """The Stack's three licence columns, the same lists on each of n rows."""
  col = lambda v: pa.array([list(v) if v is not None else None] * n,  # noqa: E731
                           type=pa.list_(pa.string()))
  return {"max_stars_repo_licenses": col(stars), "max_issues_repo_licenses": col(issues),
          "max_forks_repo_licenses": col(forks)}


@pytest.fixture
def stack_dir(tmp_path):
  root = tmp_path / "stack"
  (root / "python").mkdir(parents=True)
  docs = [f"def f{i}():\n    return {i}\n" for i in range(30)]
  for shard in range(3):
    table = pa.table({"content": docs[shard * 10:(shard + 1) * 10],
                      "size": list(range(10)), **_licences(10)})
    pq.write_table(table, root / "python" / f"data-{shard:05d}-of-00003.parquet")
  # bad records: empty, None, binary with NUL, invalid UTF-8 in a binary column
  bad = pa.table({"content": pa.array([b"", None, b"\x00\x01binary", b"ok \xff\xfe bytes\n"],
                                      type=pa.binary()), **_licences(4)})
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


# --- The Stack as the CodeGen2 model card describes it: 19 languages, permissive licences.

MODEL_CARD_LANGUAGES = {"c", "c++", "c-sharp", "dart", "go", "java", "javascript", "kotlin",
                        "lua", "php", "python", "ruby", "rust", "scala", "shell", "sql",
                        "swift", "typescript", "vue"}


def test_the_19_languages_of_the_model_card():
  import tasks  # noqa: F401
  from tasks.stack import LANGUAGES
  assert set(LANGUAGES.values()) == MODEL_CARD_LANGUAGES and len(LANGUAGES) == 19
  code = seqio.get_mixture_or_task("stack_code")
  assert sorted(t.name for t in code.tasks) == sorted(f"stack_{n}" for n in LANGUAGES)
  assert "stack_vue" in seqio.TaskRegistry.names() and "stack_r" not in seqio.TaskRegistry.names()


def test_licence_filter_keeps_rows_whose_licences_are_all_accepted(tmp_path, caplog):
  import logging

  from tasks.stack import PERMISSIVE_LICENSES
  rows = [  # (text, stars, issues, forks, kept?)
      ("mit", ["MIT"], None, None, True),
      ("apache from forks only", None, [], ["Apache-2.0"], True),
      ("two accepted", ["BSD-3-Clause", "MIT"], ["ISC"], None, True),
      ("gpl beside mit", ["MIT", "GPL-3.0-only"], None, None, False),
      ("gpl in another column", ["MIT"], ["GPL-3.0-only"], None, False),
      ("no licence at all", None, [], None, False),
      ("cc-by: in bigcode's list, not ours", ["CC-BY-4.0"], None, None, False),
  ]
  (tmp_path / "s").mkdir()
  lists = pa.list_(pa.string())
  pq.write_table(pa.table({
      "content": [r[0] for r in rows],
      "max_stars_repo_licenses": pa.array([r[1] for r in rows], lists),
      "max_issues_repo_licenses": pa.array([r[2] for r in rows], lists),
      "max_forks_repo_licenses": pa.array([r[3] for r in rows], lists)}),
      tmp_path / "s" / "a.parquet")
  licences = files.LicenseFilter(PERMISSIVE_LICENSES, "stack_test")
  with caplog.at_level(logging.INFO):
    got = [text for _, text in files.read_parquet(str(tmp_path / "s" / "a.parquet"),
                                                  licenses=licences)]
  assert got == [r[0] for r in rows if r[4]]
  assert licences.kept == 3 and licences.dropped == 4
  assert "licence filter stack_test: 3 documents kept, 4 dropped" in caplog.text
  # The same through a source (train and validation together).
  src = files.parquet_source(tmp_path / "s", "stack test",
                             licenses=files.LicenseFilter(PERMISSIVE_LICENSES, "t2"))
  assert _all(src) == sorted(r[0] for r in rows if r[4])


def test_stack_tasks_filter_by_the_gin_licence_setting(tmp_path):
  import gin
  import tasks  # noqa: F401
  root = tmp_path / "stack"
  (root / "go").mkdir(parents=True)
  pq.write_table(pa.table({"content": ["package mit"], **_licences(1, stars=["MIT"])}),
                 root / "go" / "a.parquet")
  pq.write_table(pa.table({"content": ["package gpl"], **_licences(1, stars=["GPL-2.0"])}),
                 root / "go" / "b.parquet")
  pq.write_table(pa.table({"content": ["package bare"]}), root / "go" / "c.parquet")
  source = seqio.get_mixture_or_task("stack_go").source

  def texts():
    return [t for t in _all(source) if t]  # minus the end-of-pass marker

  try:
    gin.parse_config(f"tasks.paths.data_dirs.stack = '{root}'")
    with pytest.raises(tf.errors.OpError, match="c.parquet has no licence column"):
      texts()
    gin.parse_config("tasks.stack.accepted_licenses.licenses = None")
    assert texts() == ["package bare", "package gpl", "package mit"]
    (root / "go" / "c.parquet").unlink()
    gin.parse_config("tasks.stack.accepted_licenses.licenses = ['GPL-2.0']")
    assert texts() == ["package gpl"]
  finally:
    gin.clear_config()


def _stack_of_sizes(root, sizes):
  from tasks.stack import LANGUAGES
  for name, d in LANGUAGES.items():
    (root / d).mkdir(parents=True)
    texts = [os.urandom(60).hex() for _ in range(sizes.get(name, 1))]  # incompressible
    pq.write_table(pa.table({"content": texts}), root / d / "0.parquet")
  return {n: os.path.getsize(root / d / "0.parquet") for n, d in LANGUAGES.items()}


def test_language_rates_follow_bytes_on_disk_or_gin(tmp_path):
  import gin
  import tasks  # noqa: F401
  from tasks.stack import LANGUAGES, language_rates
  sizes = _stack_of_sizes(tmp_path / "stack", {"python": 5000, "vue": 20})
  total = sum(sizes.values())
  try:
    gin.parse_config(f"tasks.paths.data_dirs.stack = '{tmp_path / 'stack'}'")
    rates = language_rates()
    assert rates == pytest.approx({n: b / total for n, b in sizes.items()})
    assert rates["python"] > 5 * rates["vue"] > 5 * rates["c"]
    code, pile_mix = (seqio.get_mixture_or_task(n) for n in ("stack_code", "stack_code_pile"))
    got = {t.name: code.get_rate(t) for t in code.tasks}
    assert got == pytest.approx({f"stack_{n}": r for n, r in rates.items()})
    pile_rates = {t.name: pile_mix.get_rate(t) for t in pile_mix.tasks}
    assert pile_rates.pop("pile") == 0.5
    assert pile_rates == pytest.approx({f"stack_{n}": r / 2 for n, r in rates.items()})
    gin.parse_config("tasks.stack.language_rates.mode = 'equal'")
    assert language_rates() == pytest.approx({n: 1 / 19 for n in LANGUAGES})
    gin.parse_config("tasks.stack.language_rates.weights = {'python': 3, 'go': 1}")
    assert {n: r for n, r in language_rates().items() if r} == {"python": 0.75, "go": 0.25}
    gin.parse_config("tasks.stack.language_rates.weights = {'r': 1}")
    with pytest.raises(ValueError, match="unknown languages \\['r'\\]"):
      language_rates()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("gin_file,pile", [
    *[(f"gin/runs/pretrain_{s}.gin", False) for s in ("1b", "3_7b", "7b", "16b")],
    ("gin/lessons/lesson4_code.gin", False), ("gin/lessons/lesson4_code_nl.gin", True)])
def test_run_files_mix_the_stack_alone_and_lesson4_adds_the_pile(gin_file, pile):
  import gin
  import tasks  # noqa: F401
  from codegen2_jax import gin_config, trainer  # noqa: F401
  from tasks.stack import LANGUAGES
  try:
    gin_config.parse([gin_file], [])
    name = gin_config.macro("MIXTURE_OR_TASK_NAME")
  finally:
    gin.clear_config()
  names = {t.name for t in seqio.get_mixture_or_task(name).tasks}
  assert names - {"pile"} == {f"stack_{n}" for n in LANGUAGES}
  assert ("pile" in names) == pile
