"""Data sources on gs:// (the GCS protocol server of conftest's `gcs_emulator`): The Stack's
parquet folders, The Pile's jsonl.zst folders and source trees read the same documents, in
the same order, as local copies; damage and missing roots are named with their URLs; a
folder is listed in one request and a parquet file is streamed; training reads gs://."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from codegen2_jax import storage
from codegen2_jax.data import files, pipeline


def _upload(local: Path, url: str) -> str:
  """Copies the files under `local` to the gs:// folder `url`; returns `url`."""
  for path in sorted(local.rglob("*")):
    if path.is_file():
      (storage.path(url) / path.relative_to(local).as_posix()).write_bytes(path.read_bytes())
  return url


def _read(source, split=None):
  """Every text of `source` (both splits unless one is named), in the order the pipeline
  yields them."""
  out = []
  for s in [split] if split else ["train", "validation"]:
    ds = source.get_dataset(s, shuffle=False)
    out += [ex["text"].decode() for ex in pipeline.numpy_iterator(ds)]
  return out


def _no_local_gs_folder(cwd: Path):
  assert not list(cwd.glob("gs:*")), os.listdir(cwd)


@pytest.fixture
def cwd(tmp_path, monkeypatch):
  """An empty working directory: a gs:// URL taken for a local path would land here."""
  d = tmp_path / "cwd"
  d.mkdir()
  monkeypatch.chdir(d)
  yield d
  _no_local_gs_folder(d)


def _licences(n):
  col = pa.array([["MIT"]] * n, type=pa.list_(pa.string()))
  return {"max_stars_repo_licenses": col, "max_issues_repo_licenses": pa.nulls(n, col.type),
          "max_forks_repo_licenses": pa.nulls(n, col.type)}


def _stack(root: Path, n_docs=120) -> Path:
  """A Stack-format python folder (the columns of The Stack v1.1 dedup): 3 files of
  several row groups each, and in a subfolder a file whose rows are empty or dropped by the
  licence filter."""
  (root / "python" / "sub").mkdir(parents=True)
  docs = [f"def f{i}(x):\n    '''document {i}'''\n    return x * {i} + {i % 7}\n"
          for i in range(n_docs)]
  per = n_docs // 3
  for shard in range(3):
    part = docs[shard * per:(shard + 1) * per]
    pq.write_table(pa.table({"content": part, **_licences(len(part))}),
                   root / "python" / f"data-{shard:05d}-of-00003.parquet", row_group_size=16)
  gpl = pa.array([["GPL-3.0-only"], ["MIT"]], type=pa.list_(pa.string()))
  pq.write_table(pa.table({"content": ["gpl code\n", ""], "max_stars_repo_licenses": gpl,
                           "max_issues_repo_licenses": pa.nulls(2, gpl.type),
                           "max_forks_repo_licenses": pa.nulls(2, gpl.type)}),
                 root / "python" / "sub" / "extra.parquet")
  return root


def test_stack_parquet_folder_on_gcs_gives_the_batches_of_the_local_copy(tmp_path, gcs_dir,
                                                                         cwd):
  import tasks  # noqa: F401
  import seqio
  local = _stack(tmp_path / "stack")
  remote = _upload(local, f"{gcs_dir}/stack")

  def run(root):
    gin.parse_config(f"tasks.paths.data_dirs.stack = '{root}'")  # the CodeGen2 tokenizer
    try:
      source = seqio.get_mixture_or_task("stack_python").source
      names = source.list_shards("validation")  # every file
      ds = pipeline.host_dataset("stack_python", seq_len=64, batch_size=4, seed=3,
                                 num_epochs=1)
      return names, list(pipeline.batches(ds))
    finally:
      gin.clear_config()

  local_names, local_batches = run(local)
  remote_names, remote_batches = run(remote)
  assert [n[len(remote) + 1:] for n in remote_names] == \
      [os.path.relpath(n, local) for n in local_names] == \
      [f"python/data-0000{i}-of-00003.parquet" for i in range(3)] + ["python/sub/extra.parquet"]
  assert len(remote_batches) == len(local_batches) >= 8
  for a, b in zip(local_batches, remote_batches):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_reads_a_stack_folder_on_gcs(tmp_path, gcs_dir, cwd):
  remote = _upload(_stack(tmp_path / "stack"), f"{gcs_dir}/stack")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")  # the emulator's too
  model_dir = tmp_path / "run"
  cmd = [sys.executable, "-m", "codegen2_jax.train", "--gin_file=gin/runs/test_tiny.gin",
         "--gin.train.show_samples_at_end=False", "--gin.train.eval_every=0",
         "--gin.MIXTURE_OR_TASK_NAME='stack_python'", "--gin.TRAIN_STEPS=2",
         "--gin.CHECKPOINT_EVERY=2", f"--gin.tasks.paths.data_dirs.stack='{remote}'",
         "--gin.ModelConfig.vocab_size=51200",  # the CodeGen2 tokenizer's, The Stack's default
         f"--model_dir={model_dir}"]
  p = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:]
  steps = [json.loads(line)["step"] for line in
           (model_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
  assert steps[-1] == 2, p.stdout[-3000:]


def _pile_and_tree(root: Path) -> tuple[Path, Path]:
  pile = root / "pile"
  (pile / "more").mkdir(parents=True)
  lines = [json.dumps({"text": f"document {i}\n" + "words " * (i % 40), "meta": {}})
           for i in range(300)]
  cctx = zstandard.ZstdCompressor()
  # two frames in one file, as `zstd` writes files concatenated
  (pile / "00.jsonl.zst").write_bytes(cctx.compress("\n".join(lines[:200]).encode() + b"\n")
                                      + cctx.compress("\n".join(lines[200:]).encode()))
  (pile / "more" / "01.jsonl.gz").write_bytes(gzip.compress(
      b'{"text": "gzip document"}\n{not json}\n'))
  (pile / "more" / "02.jsonl").write_text(json.dumps({"text": "plain document"}) + "\n")
  (pile / "notes.txt").write_text("not a pile file\n")
  tree = root / "tree"
  (tree / "pkg" / "sub").mkdir(parents=True)
  for i in range(20):
    (tree / "pkg" / ("sub" if i % 2 else "") / f"m{i}.py").write_text(f"x = {i}\n")
  (tree / "top.rs").write_text("fn main() {}\n")
  (tree / "README.md").write_text("prose\n")
  (tree / "blob.py").write_bytes(b"\x00ELF")
  return pile, tree


def test_pile_folder_and_source_tree_on_gcs_read_as_locally(tmp_path, gcs_dir, cwd):
  pile, tree = _pile_and_tree(tmp_path)
  rpile, rtree = _upload(pile, f"{gcs_dir}/pile"), _upload(tree, f"{gcs_dir}/tree")
  local, remote = files.jsonl_source(pile, "pile"), files.jsonl_source(rpile, "pile")
  assert [os.path.relpath(f, pile) for f in local.files()] == \
      [f[len(rpile) + 1:] for f in remote.files()] == \
      ["00.jsonl.zst", "more/01.jsonl.gz", "more/02.jsonl"]
  got = _read(remote)
  assert got == _read(local) and len(got) == 302
  assert _read(files.jsonl_source(f"{rpile}/more/02.jsonl", "one file")) == ["plain document"]

  local, remote = (files.tree_source(t, [".py", ".rs"], "code") for t in (tree, rtree))
  assert [f[len(rtree) + 1:] for f in remote.files()] == \
      [os.path.relpath(f, tree) for f in local.files()]
  got = _read(remote)
  assert got == _read(local) and len(got) == 21 and "fn main() {}\n" in got
  names = [ex["source"].decode() for ex in pipeline.numpy_iterator(
      remote.get_dataset("train", shuffle=False))]
  assert names and all(n.startswith(rtree + "/") for n in names)
  top_only = files.walk_files(rtree, ["*.rs", "*.py"])  # no ** : the top folder only
  assert top_only == [f"{rtree}/blob.py", f"{rtree}/top.rs"]


def test_truncated_zst_on_gcs_is_named_and_the_gin_switch_skips_it(tmp_path, gcs_dir, cwd,
                                                                  caplog):
  pile, _ = _pile_and_tree(tmp_path)
  data = (pile / "00.jsonl.zst").read_bytes()
  (pile / "00.jsonl.zst").write_bytes(data[:len(data) * 2 // 3])
  remote = _upload(pile, f"{gcs_dir}/pile")
  source = files.jsonl_source(remote, "pile")
  with pytest.raises(files.CorruptFileError) as e:
    _read(source)
  assert str(e.value).startswith(f"{remote}/00.jsonl.zst is truncated")
  gin.parse_config("read_settings.skip_corrupt_files = True")
  try:
    got = _read(source)
  finally:
    gin.clear_config()
  assert "gzip document" in got and "plain document" in got
  assert "skipped a corrupt file of pile" in caplog.text and remote in caplog.text


def test_missing_gcs_root_is_one_line_naming_it(gcs_dir, cwd, monkeypatch):
  import seqio
  import tasks  # noqa: F401
  for root in (f"{gcs_dir}/nowhere", "gs://no-such-bucket-h5/data"):
    with pytest.raises(FileNotFoundError) as e:
      files.tree_source(root, [".py"], "my code").files()
    assert str(e.value) == f"my code: expected a directory at {root}, which does not exist"
  monkeypatch.setenv("CODEGEN2_STACK_DIR", f"{gcs_dir}/stack")
  with pytest.raises(FileNotFoundError) as e:
    seqio.get_mixture_or_task("stack_rust").get_dataset({"targets": 64}, split="train")
  assert str(e.value) == (f"task stack_rust: expected a directory at {gcs_dir}/stack/rust, "
                          "which does not exist")


def _count_requests(monkeypatch, url):
  """The list that gets (method, bytes downloaded) for each HTTP request of the gcsfs
  client that serves `url`."""
  from etils import epath
  fs = epath.backend.fsspec_backend.fs(url)
  calls, call = [], fs._call

  async def counted(method, path, *args, **kwargs):
    out = await call(method, path, *args, **kwargs)
    data = out[-1] if isinstance(out, tuple) else b""  # (headers, body) of a download
    calls.append((method, len(data) if isinstance(data, bytes) else 0))
    return out
  monkeypatch.setattr(fs, "_call", counted)
  return calls


def test_a_gcs_folder_is_listed_in_one_request(tmp_path, gcs_dir, cwd, monkeypatch):
  _, tree = _pile_and_tree(tmp_path)
  remote = _upload(tree, f"{gcs_dir}/tree")
  calls = _count_requests(monkeypatch, remote)
  found = files.list_directory(remote, ["**/*.py"], "code")
  assert len(found) == 21 and len(calls) == 1, calls
  assert found[f"{remote}/pkg/m0.py"] == len("x = 0\n")


def test_a_gcs_parquet_file_is_streamed_not_downloaded(tmp_path, gcs_dir, cwd, monkeypatch):
  # 8 MB of incompressible text in 16 row groups: the first batch of documents (1024
  # rows) needs the footer and the first 2 row groups, not the whole file.
  rows = [os.urandom(512).hex() for _ in range(8192)]
  path = tmp_path / "big.parquet"
  pq.write_table(pa.table({"content": rows}), path, row_group_size=512, compression="none")
  url = f"{gcs_dir}/big.parquet"
  storage.path(url).write_bytes(path.read_bytes())
  size = path.stat().st_size
  calls = _count_requests(monkeypatch, url)
  docs = files.read_parquet(url)
  assert next(docs) == (f"{url}:0", rows[0])
  first = sum(n for _, n in calls)
  assert 0 < first < size / 3, (calls, size)
  assert [t for _, t in docs] == rows[1:]
  assert sum(n for _, n in calls) >= size * 0.9  # the counting sees every download
