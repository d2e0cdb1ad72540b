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
