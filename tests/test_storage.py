"""The filesystem layer against a real GCS protocol server (gcp-storage-emulator)."""

import os

import pytest

from codegen2_jax import storage


def test_gs_paths_round_trip_on_the_emulator_and_never_become_local(gcs_dir, tmp_path,
                                                                    monkeypatch):
  monkeypatch.chdir(tmp_path)
  d = storage.check_writable_dir(gcs_dir, "model_dir")
  (d / "sub" / "x.txt").write_text("hello")
  assert (storage.path(gcs_dir) / "sub" / "x.txt").read_text() == "hello"
  assert storage.join(gcs_dir, "a", "b") == gcs_dir + "/a/b"
  assert [p.name for p in (d / "sub").iterdir()] == ["x.txt"]
  assert os.listdir(tmp_path) == []  # no local ./gs: folder


def test_tensorstore_settings_follow_the_emulator(gcs_emulator):
  assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == gcs_emulator
  assert os.environ["EPATH_USE_TF"] == "false"


def test_a_file_or_a_missing_bucket_is_named(gcs_emulator, tmp_path):
  f = tmp_path / "file"
  f.write_text("")
  with pytest.raises(OSError, match="model_dir .*file.* is a file"):
    storage.check_writable_dir(f, "model_dir")
  with pytest.raises(OSError, match="model_dir gs://no-such-bucket/run is not writable"):
    storage.check_writable_dir("gs://no-such-bucket/run", "model_dir")


def test_local_paths_are_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(storage.path("run")) == str(tmp_path / "run")
  assert not storage.is_remote("run") and storage.is_remote("gs://b/run")


def test_objects_written_by_another_writer_are_seen(gcs_dir, gcs_emulator):
  # gcsfs would otherwise answer from its listing cache: a checkpoint written by
  # tensorstore or another host would stay invisible to exists/iterdir in this process.
  import urllib.parse
  import urllib.request
  d = storage.path(gcs_dir)
  (d / "a" / "x").write_text("1")
  assert [p.name for p in d.iterdir()] == ["a"] and not (d / "b").exists()
  name = urllib.parse.quote(gcs_dir[len("gs://test-bucket/"):] + "/b/y", safe="")
  urllib.request.urlopen(urllib.request.Request(
      f"{gcs_emulator}/upload/storage/v1/b/test-bucket/o?uploadType=media&name={name}",
      data=b"2", method="POST")).read()
  assert sorted(p.name for p in d.iterdir()) == ["a", "b"]
  assert (d / "b").is_dir() and (d / "b" / "y").read_text() == "2"


def test_list_tree_walks_local_and_gs_folders_alike(gcs_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  local = tmp_path / "tree"
  for rel, data in [("b.py", "bb"), ("a/z.py", "z"), ("a/c/x.py", "xxx"), ("top.txt", "")]:
    (local / rel).parent.mkdir(parents=True, exist_ok=True)
    (local / rel).write_text(data)
    (storage.path(gcs_dir) / rel).write_text(data)
  os.symlink("a", local / "loop")           # a directory link: not followed
  os.symlink("missing", local / "broken")   # a broken link: left out
  walk_order = [("b.py", 2), ("top.txt", 0), ("a/z.py", 1), ("a/c/x.py", 3)]
  got_local = storage.list_tree(local)
  assert [(os.path.relpath(p, local), n) for p, n in got_local.items()] == walk_order
  got_gs = storage.list_tree(gcs_dir + "/")
  assert [(p[len(gcs_dir) + 1:], n) for p, n in got_gs.items()] == walk_order
  assert storage.list_tree(f"{gcs_dir}/b.py") == {}  # a file, not a folder
  assert storage.list_tree(f"{gcs_dir}/nowhere") == storage.list_tree("gs://no-such-b/x") == {}
  assert storage.list_tree(tmp_path / "nowhere") == {}
  assert sorted(os.listdir(tmp_path)) == ["tree"]  # no local ./gs: folder
