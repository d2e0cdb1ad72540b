"""sample / eval / convert / lessons and the run vocabulary on gs:// (the GCS emulator): the
same tokens, figures and parameters as from a local copy, and never a local `gs:` folder."""

import contextlib
import io
import json
import os
import shutil
import uuid

import numpy as np
import pytest

from codegen2_jax import convert, sample, storage
from codegen2_jax.data import vocab as V
from codegen2_jax.eval import __main__ as eval_cli


def upload(local, url: str) -> None:
  """Copies the local folder tree `local` to `url`, file by file, through storage."""
  for root, _, names in os.walk(local):
    for name in names:
      src = os.path.join(root, name)
      storage.path(src).copy(storage.join(url, os.path.relpath(src, local)))


def download(url: str, local) -> None:
  """Copies the gs:// folder tree `url` into the local folder `local`."""
  for src in storage.list_tree(url):
    dst = os.path.join(local, src[len(url) + 1:])
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    storage.path(src).copy(dst)


def no_local_gs(*folders) -> None:
  for folder in folders:
    found = [os.path.join(r, d) for r, ds, _ in os.walk(folder) for d in ds
             if d.startswith("gs:")]
    assert not found and not os.path.exists("gs:"), found


def cli(main, *argv):
  """(exit code, stdout, stderr) of an entry point's main(argv)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main(list(argv))
  return code, out.getvalue(), err.getvalue()


def last_json(text: str):
  return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def local_run(tiny_run):
  """A 2-step tiny run (conftest.tiny_run, shared with other files: read only)."""
  return tiny_run


@pytest.fixture(scope="module")
def gs_run(local_run, gcs_emulator):
  """The local run copied to gs:// file by file (tests/test_gcs_run.py trains into gs://)."""
  url = f"gs://test-bucket/cli-gcs-{uuid.uuid4().hex[:8]}/run"
  upload(local_run, url)
  return url


PROMPT = "def add(a, b):"


def test_sample_and_perplexity_of_a_gs_run_match_its_local_copy(local_run, gs_run, tmp_path,
                                                               monkeypatch):
  monkeypatch.chdir(tmp_path)
  ids = {}
  for where in (local_run, gs_run):
    code, out, err = cli(sample.main, f"--checkpoint_dir={where}", f"--prompt={PROMPT}",
                         "--print_ids", "--max_new_tokens=6")
    assert code == 0, err
    ids[where] = last_json(out)
  assert ids[gs_run] == ids[local_run] and len(ids[gs_run]) > 0
  figures = {}
  for where in (local_run, gs_run):
    code, out, err = cli(eval_cli.main, "perplexity", f"--checkpoint_dir={where}",
                         "--task=stdlib_code", "--max_documents=2", "--seq_len=64",
                         "--batch_size=2")
    assert code == 0, err
    figures[where] = last_json(out)
  assert figures[gs_run]["loss"] == figures[local_run]["loss"]
  assert figures[gs_run]["tokens"] == figures[local_run]["tokens"] > 0
  no_local_gs(tmp_path, local_run)


def test_sample_from_a_gs_run_needs_no_local_vocabulary_cache(local_run, gs_run, tmp_path,
                                                            monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = [f"--prompt={PROMPT}", "--max_new_tokens=6"]
  code, want, err = cli(sample.main, f"--checkpoint_dir={local_run}", *argv)
  assert code == 0, err
  # A machine that never saw this vocabulary: an empty cache elsewhere.
  fresh = tmp_path / "fresh_cache"
  monkeypatch.setenv("CODEGEN2_JAX_CACHE", str(fresh))
  code, got, err = cli(sample.main, f"--checkpoint_dir={gs_run}", *argv)
  assert code == 0, err
  assert got == want and got.startswith(PROMPT)
  sha = V.read_manifest(gs_run)["sha256"]
  cached = fresh / "remote" / sha / "spm.model"
  assert cached.read_bytes() == (local_run / "vocab" / "spm.model").read_bytes()
  # A damaged cache file is replaced from the run's copy, not trusted.
  cached.write_bytes(b"garbage")
  code, again, err = cli(sample.main, f"--checkpoint_dir={gs_run}", *argv)
  assert code == 0 and again == want, err
  assert V.sha256_file(cached) == sha
  no_local_gs(tmp_path)


def test_orbax_to_hf_of_a_gs_run_and_back(local_run, gs_run, gcs_dir, tmp_path, monkeypatch):
  from safetensors.numpy import load_file
  monkeypatch.chdir(tmp_path)
  code, out, err = cli(convert.main, "orbax-to-hf", f"--checkpoint_dir={local_run}",
                       f"--out_dir={tmp_path / 'hf_local'}")
  assert code == 0, err
  hf = storage.join(gcs_dir, "hf")
  code, out, err = cli(convert.main, "orbax-to-hf", f"--checkpoint_dir={gs_run}",
                       f"--out_dir={hf}")
  assert code == 0, err
  assert "no tokenizer written" in err  # the run's vocabulary is SentencePiece
  assert sorted(p.name for p in storage.path(hf).iterdir()) == ["config.json",
                                                               "model.safetensors"]
  assert (storage.path(hf) / "config.json").read_text() == (
      tmp_path / "hf_local" / "config.json").read_text()
  download(hf, tmp_path / "hf_back")
  ours, ref = (load_file(str(d / "model.safetensors"))
               for d in (tmp_path / "hf_back", tmp_path / "hf_local"))
  assert sorted(ours) == sorted(ref)
  for k in ref:
    np.testing.assert_array_equal(ours[k], ref[k])
  # ... and back from gs:// to gs://: the same completion as the original run.
  o2 = storage.join(gcs_dir, "o2")
  code, out, err = cli(convert.main, "hf-to-orbax", f"--hf_dir={hf}", f"--out_dir={o2}",
                       "--mp_num=4")
  assert code == 0, err
  assert last_json(out)["tokenizer"] is None
  for run in (local_run, o2):
    code, out, err = cli(sample.main, f"--checkpoint_dir={run}", "--prompt_ids=2,10,11,12",
                         "--max_new_tokens=5")
    assert code == 0, err
    if run == local_run:
      want = out
  assert out == want
  no_local_gs(tmp_path)


def _random_hf_dir(path, vocab_size=51200):
  """A tiny random CodeGen in the Hugging Face layout with CodeGen2's tokenizer.json."""
  from flax import nnx
  from safetensors.numpy import save_file

  from codegen2_jax.models.codegen import CodeGen, ModelConfig
  cfg = ModelConfig(vocab_size=vocab_size, d_model=32, n_layers=1, n_heads=2, head_dim=16,
                    rotary_dim=8, d_ff=64, max_len=64)
  params = nnx.state(CodeGen(cfg, nnx.Rngs(3)), nnx.Param).to_pure_dict()
  os.makedirs(path)
  tensors = convert.params_to_hf(params, cfg, mp_num=4)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(convert.config_to_hf(cfg, 50256), f)
  shutil.copy(V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json", path)
  return tensors


def test_convert_with_a_tokenizer_between_gs_folders(gcs_dir, tmp_path, monkeypatch):
  from safetensors.numpy import load_file
  monkeypatch.chdir(tmp_path)
  tensors = _random_hf_dir(tmp_path / "hf")
  hf, run, hf2 = (storage.join(gcs_dir, name) for name in ("hf", "run", "hf2"))
  upload(tmp_path / "hf", hf)
  code, out, err = cli(convert.main, "hf-to-orbax", f"--hf_dir={hf}", f"--out_dir={run}",
                       "--mp_num=4")
  assert code == 0, err
  assert last_json(out)["tokenizer"] == f"copied from {hf}/tokenizer.json"
  assert V.read_manifest(run)["kind"] == "hf_tokenizer"
  code, out, err = cli(convert.main, "orbax-to-hf", f"--checkpoint_dir={run}",
                       f"--out_dir={hf2}")
  assert code == 0, err
  assert sorted(p.name for p in storage.path(hf2).iterdir()) == [
      "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
      "tokenizer_config.json"]
  assert (storage.path(hf2) / "tokenizer.json").read_bytes() == (
      V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json").read_bytes()
  assert json.loads((storage.path(hf2) / "config.json").read_text())["eos_token_id"] == 50256
  download(hf2, tmp_path / "hf2")
  back = load_file(str(tmp_path / "hf2" / "model.safetensors"))
  assert sorted(back) == sorted(tensors)
  for k in tensors:
    np.testing.assert_array_equal(back[k], tensors[k])
  # Text through the run's tokenizer.json on gs://, as from a local copy of the run.
  download(run, tmp_path / "run")
  outs = []
  for where in (run, tmp_path / "run"):
    code, out, err = cli(sample.main, f"--checkpoint_dir={where}", "--prompt=def f(",
                         "--max_new_tokens=4")
    assert code == 0, err
    outs.append(out)
  assert outs[0] == outs[1] and outs[0].startswith("def f(")
  no_local_gs(tmp_path)


def test_run_vocabulary_on_gs_is_checked_by_sha256(vocab, gcs_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for v, name in ((vocab, "spm.model"), (V.codegen2_tokenizer(), "tokenizer.json")):
    run = storage.join(gcs_dir, name)
    assert V.load_from_run(run) is None and V.read_manifest(run) is None
    out = V.save_to_run(v, run)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", name]
    assert V.record_in_run(v, run) == V.read_manifest(run)["sha256"]  # a resume: same file
    got = V.load_from_run(run)
    text = "def f(x):\n    return x + 1<|endoftext|>"
    assert got.encode(text) == v.encode(text) and got.vocab_size == v.vocab_size
  model = storage.path(gcs_dir) / "spm.model" / "vocab" / "spm.model"
  model.write_bytes(model.read_bytes()[:-1] + b"x")  # tampered on gs://
  with pytest.raises(V.RunVocabularyError, match=f"{model} has sha256 .* not the"):
    V.load_from_run(storage.join(gcs_dir, "spm.model"))
  with pytest.raises(V.RunVocabularyError, match="trained with gs://"):
    V.record_in_run(V.codegen2_tokenizer(), storage.join(gcs_dir, "spm.model"))
  no_local_gs(tmp_path)


def test_vocabulary_files_given_as_gs_urls(vocab, gcs_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  spm_url = storage.join(gcs_dir, "my", "v.model")
  tok_url = storage.join(gcs_dir, "my", "tokenizer.json")
  storage.path(vocab.sentencepiece_model_file).copy(spm_url)
  storage.path(V.CODEGEN2_TOKENIZER_DIR / "tokenizer.json").copy(tok_url)
  text = "import os\nprint(os.getcwd())\n"
  remote = V.CodeGenVocabulary(spm_url)
  assert remote.encode(text) == vocab.encode(text)
  assert V.vocabulary_file(remote) == ("sentencepiece", spm_url)
  assert V.HfTokenizerVocabulary(tok_url).encode(text) == V.codegen2_tokenizer().encode(text)
  with pytest.raises(FileNotFoundError, match=f"{gcs_dir}/my/none.model"):
    V.CodeGenVocabulary(storage.join(gcs_dir, "my", "none.model")).encode("x")
  no_local_gs(tmp_path)


def test_eval_outputs_on_gs(gs_run, gcs_dir, tmp_path, monkeypatch):
  from codegen2_jax.eval import humaneval, infilling
  monkeypatch.chdir(tmp_path)
  tasks = storage.join(gcs_dir, "tasks.jsonl")
  code, out, err = cli(eval_cli.main, "infill", "tasks", "--benchmark=random-span-light",
                       f"--out={tasks}")
  assert code == 0, err
  written = [json.loads(x) for x in storage.path(tasks).read_text().splitlines()]
  assert written == list(infilling.read_tasks("random-span-light").values())
  samples = storage.join(gcs_dir, "he", "samples.jsonl")
  code, out, err = cli(eval_cli.main, "humaneval", "generate", f"--checkpoint_dir={gs_run}",
                       f"--out={samples}", "--limit=1", "--max_new_tokens=4")
  assert code == 0, err
  assert [s["task_id"] for s in humaneval.read_jsonl(samples)] == ["HumanEval/0"]
  # Scoring a gs:// samples file writes the results beside it.
  problem = humaneval.read_problems()["HumanEval/0"]
  humaneval.write_jsonl(samples, [{"task_id": "HumanEval/0",
                                   "completion": problem["canonical_solution"]},
                                  {"task_id": "HumanEval/0", "completion": "    return 0\n"}])
  problems = storage.join(gcs_dir, "problems.jsonl")
  humaneval.write_jsonl(problems, [problem])
  code, out, err = cli(eval_cli.main, "humaneval", "score", f"--samples={samples}", "--k=1",
                       "--timeout=5", f"--problem_file={problems}")
  assert code == 0, err
  assert last_json(out)["pass@1"] == 0.5
  assert [r["passed"] for r in humaneval.read_jsonl(samples + "_results.jsonl")] == [True,
                                                                                    False]
  no_local_gs(tmp_path)


def test_lessons_report_and_plots_on_gs(gcs_dir, tmp_path, monkeypatch):
  from codegen2_jax import lessons
  monkeypatch.chdir(tmp_path)
  out = storage.path(gcs_dir) / "lessons"
  lesson = lessons.LESSONS[2]
  runs, results = {}, {}
  for i, arm in enumerate(lesson.arms):
    runs[arm] = out / "runs" / arm
    (runs[arm] / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 5.0 - s / (i + 1)}) + "\n" for s in range(4)))
    results[arm] = {m: 1.0 + i for m in lessons.METRICS}
  header = {"date": "today", "machine": "here", "command": "c", "compute": "x", "seed": 0,
            "eval": "e", "timing": {}, "wall_seconds": 1.0}
  report = lessons.write_report(out, [lesson], runs, results, header)
  assert os.fspath(report) == f"{gcs_dir}/lessons/report.md"
  assert "![lesson 2 loss curves](lesson2.png)" in report.read_text()
  assert (out / "lesson2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  no_local_gs(tmp_path)


def test_a_missing_gs_checkpoint_dir_is_one_line_exit_2(gcs_dir, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  missing = storage.join(gcs_dir, "no_run")
  for main, argv in (
      (sample.main, [f"--checkpoint_dir={missing}", "--prompt=x"]),
      (eval_cli.main, ["perplexity", f"--checkpoint_dir={missing}", "--task=stdlib_code"]),
      (eval_cli.main, ["humaneval", "generate", f"--checkpoint_dir={missing}",
                       f"--out={storage.join(gcs_dir, 's.jsonl')}"]),
      (convert.main, ["orbax-to-hf", f"--checkpoint_dir={missing}",
                      f"--out_dir={storage.join(gcs_dir, 'hf')}"]),
      (convert.main, ["hf-to-orbax", f"--hf_dir={missing}",
                      f"--out_dir={storage.join(gcs_dir, 'o')}"])):
    code, out, err = cli(main, *argv)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and lines[-1].startswith("error: ") and missing in lines[-1], (argv, err)
    assert len([x for x in lines if x.startswith(("error", "Traceback"))]) == 1, err
  assert not storage.path(gcs_dir).exists() or not list(storage.path(gcs_dir).iterdir())
  no_local_gs(tmp_path)
