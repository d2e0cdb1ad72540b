"""Resume without replay: the data pipeline's tf.data iterator state, saved with each
checkpoint (checkpoints.DataStateHandler) and restored into a fresh pipeline, continues
with the same batches and reads none of the skipped documents; a checkpoint without it
resumes by replay with a warning; the state round-trips through gs://.
(The killed-and-resumed training runs: test_training.py.)"""

import json
import logging

import gin
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from codegen2_jax import checkpoints, storage, trainer
from codegen2_jax.data import files, pipeline


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _demo(**kw):
  return pipeline.host_dataset("stdlib_demo", 128, 4, seed=0, **kw)


def test_stdlib_demo_state_restores_the_next_batches_of_the_replay(vocab, tmp_path):
  from codegen2_jax.data import sources
  first = pipeline.HostBatches(_demo())
  _take(first, 6)
  size = first.save_state(str(tmp_path / "state"))
  want = _take(first, 3)
  restored = pipeline.HostBatches(_demo())
  restored.restore_state(str(tmp_path / "state"))
  _assert_same(_take(restored, 3), want)
  _assert_same(_take(pipeline.batches(_demo(), skip=6), 3), want)  # the old replay agrees
  # The stdlib sources shuffle indices: the state holds no copy of the corpus.
  corpus = sum(len(t.encode()) for _, t in sources.split_docs(sources.stdlib_code(), "train"))
  assert size < corpus / 2, (size, corpus)


def _file_tasks(root):
  """Two Stack-shaped tasks (parquet `content` files; jsonl.zst files), 30 small files
  each, and a mixture of both; registered once per session."""
  import seqio
  from codegen2_jax.data import registry
  if "resume_test_mix" in seqio.MixtureRegistry.names():
    return
  (root / "pq").mkdir()
  (root / "js").mkdir()
  for f in range(30):
    docs = [f"def f{f}_{i}(x):\n    return x * {i} + {f}\n" for i in range(10)]
    pq.write_table(pa.table({"content": docs}), root / "pq" / f"part-{f:03d}.parquet")
    lines = "".join(json.dumps({"text": f"# note {f} {i}\nprint({i} - {f})\n"}) + "\n"
                    for i in range(10))
    (root / "js" / f"part-{f:03d}.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress(lines.encode()))
  registry.register_task("resume_test_parquet", files.parquet_source(root / "pq", "test pq"))
  registry.register_task("resume_test_jsonl", files.jsonl_source(root / "js", "test jsonl"))
  registry.register_mixture("resume_test_mix", [("resume_test_parquet", 1.0),
                                                ("resume_test_jsonl", 1.0)])


def _reads():
  import seqio
  # A task's source is epochs.EpochMarkedSource around the FileSource.
  return sum(seqio.get_mixture_or_task(t).source.inner.documents_read
             for t in ("resume_test_parquet", "resume_test_jsonl"))


@pytest.fixture(scope="module")
def file_tasks(tmp_path_factory, vocab):
  _file_tasks(tmp_path_factory.mktemp("files"))


def _files(shuffle=True):
  return pipeline.host_dataset("resume_test_mix", 64, 4, seed=1, shuffle=shuffle)


def test_file_sources_state_restores_the_next_batches(file_tasks, tmp_path):
  first = pipeline.HostBatches(_files())
  _take(first, 8)
  first.save_state(str(tmp_path / "state"))
  want = _take(first, 4)
  restored = pipeline.HostBatches(_files())
  restored.restore_state(str(tmp_path / "state"))
  _assert_same(_take(restored, 4), want)
  _assert_same(_take(pipeline.batches(_files(), skip=8), 4), want)


def test_a_restore_reads_none_of_the_skipped_documents(file_tasks, tmp_path):
  # Unshuffled and with a small packing window, so that the documents read follow the
  # batches taken: a replay of 80 batches reads some 1,200 documents again (two passes
  # over the 600); a restore re-reads at most the start of the files open at the save (10
  # documents each) plus tf.data's read-ahead (a few hundred), which both pipelines have.
  with gin.unlock_config():
    gin.bind_parameter("packing.pack_dataset.window", 16)
  try:
    first = pipeline.HostBatches(_files(shuffle=False))
    _take(first, 80)
    first.save_state(str(tmp_path / "state"))
    want = _take(first, 2)
    start = _reads()
    restored = pipeline.HostBatches(_files(shuffle=False))
    restored.restore_state(str(tmp_path / "state"))
    _assert_same(_take(restored, 2), want)
    restore_reads = _reads() - start
    start = _reads()
    _assert_same(_take(pipeline.batches(_files(shuffle=False), skip=80), 2), want)
    replay_reads = _reads() - start
  finally:
    gin.clear_config()
  assert replay_reads > 1000, replay_reads
  assert restore_reads < replay_reads / 3, (restore_reads, replay_reads)


def _tiny_state():
  return {"step": jnp.asarray(0), "w": jnp.arange(8, dtype=jnp.float32)}


def _save(directory, step, data, async_save=True):
  manager = checkpoints.make_manager(directory, async_save=async_save)
  checkpoints.save(manager, step, _tiny_state(), {"batches": step}, data_iterator=data)
  checkpoints.finish(manager)


def test_a_checkpoint_without_data_state_resumes_by_replay_with_a_warning(vocab, tmp_path,
                                                                          caplog, capsys):
  d = tmp_path / "ckpt"
  it = pipeline.HostBatches(_demo())
  _take(it, 3)
  want = _take(it, 2)
  _save(d, 3, None)  # as written before data states: state and position only
  with caplog.at_level(logging.WARNING):
    data = trainer.resume_data(_demo(), str(d), 3, 3)
  _assert_same(_take(data, 2), want)
  warnings = [r.getMessage() for r in caplog.records if "replaying" in r.getMessage()]
  assert len(warnings) == 1 and "step 3 has no data state" in warnings[0], warnings
  assert "resumed at batch" not in capsys.readouterr().out
  # One written by 2 processes is replayed too, saying so.
  (d / "3" / checkpoints.DATA_STATE / "process_0-of-2").mkdir(parents=True)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _assert_same(_take(trainer.resume_data(_demo(), str(d), 3, 3), 2), want)
  assert "another number of processes (process_0-of-2; this run is process_0-of-1)" in \
      caplog.text


def test_the_data_state_is_saved_with_an_async_step_and_restored(vocab, tmp_path, capsys):
  d = tmp_path / "ckpt"
  it = pipeline.HostBatches(_demo())
  _take(it, 5)
  _save(d, 5, it)
  want = _take(it, 2)  # taken after save() returned: the saved state is still batch 5's
  # (orbax may add its own commit_success.txt marker beside the process folders)
  assert [p.name for p in (d / "5" / checkpoints.DATA_STATE).iterdir()
          if p.name.startswith("process_")] == ["process_0-of-1"]
  data = trainer.resume_data(_demo(), str(d), 5, 5)
  assert "data: resumed at batch 5 from the saved state" in capsys.readouterr().out
  _assert_same(_take(data, 2), want)


def test_the_data_state_round_trips_through_gcs(vocab, gcs_dir):
  d = f"{gcs_dir}/ckpt"
  it = pipeline.HostBatches(_demo())
  _take(it, 4)
  _save(d, 4, it, async_save=False)
  want = _take(it, 2)
  item = storage.path(d) / "4" / checkpoints.DATA_STATE / "process_0-of-1"
  assert sorted(p.name for p in item.iterdir()) == ["iterator.data-00000-of-00001",
                                                   "iterator.index"]
  _assert_same(_take(trainer.resume_data(_demo(), d, 4, 4), 2), want)
