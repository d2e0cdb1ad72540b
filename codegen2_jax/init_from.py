"""Start a run from another checkpoint's parameters: `--gin.train.init_from="'DIR'"`.

DIR is a run's model_dir, its checkpoints/ folder, or the output of `convert hf-to-orbax`,
local or gs://. Only the parameters are read (the latest step that restores), straight
into the new run's shardings; the optimizer state stays fresh and the step stays 0
(fine-tuning, continued pretraining). The trainer applies it only to a run without a
checkpoint of its own, so resuming the new run restores the new run's checkpoints.

The token ids of DIR's parameters mean what DIR's vocabulary says: when DIR carries a run
vocabulary (DIR/vocab/manifest.json) of another sha256 than the new run's, this fails;
when it carries none, a warning says the vocabulary cannot be checked.
"""

from __future__ import annotations

import logging
from typing import Any

import jax

from codegen2_jax import checkpoints, storage
from codegen2_jax.data import vocab as V


class InitFromError(ValueError):
  """DIR cannot be used to initialise a run (missing, or holding no checkpoint)."""


def checkpoint_dirs(directory: storage.PathLike) -> tuple[str, str]:
  """(checkpoints folder, run folder) of DIR: DIR/checkpoints and DIR when DIR holds a
  checkpoints/ folder (a model_dir, a converted checkpoint), else DIR and its parent.
  InitFromError naming DIR when it does not exist."""
  d = storage.path(directory)
  if not d.is_dir():
    raise InitFromError(f"train.init_from: {directory} does not exist (want a run's "
                        "model_dir, its checkpoints/ folder or a `convert hf-to-orbax` output)")
  if (d / "checkpoints").is_dir():
    return storage.join(d, "checkpoints"), str(d)
  return str(d), str(d.parent)


def check_vocabulary(run_dir: str, vocab) -> None:
  """RunVocabularyError if `run_dir` carries a vocabulary other than `vocab` (the new
  run's); a warning if it carries none. Vocabularies without a file are not checked."""
  manifest = V.read_manifest(run_dir)
  if manifest is None:
    logging.warning("train.init_from: %s carries no vocabulary (no vocab/%s), so it cannot "
                    "be checked against this run's: its token ids must mean the same tokens",
                    run_dir, V.MANIFEST)
    return
  if vocab is None:
    return
  try:
    _, src = V.vocabulary_file(vocab)
  except TypeError:  # not file-backed; record_in_run already warned
    return
  want = V.sha256_file(src)
  if manifest["sha256"] != want:
    raise V.RunVocabularyError(
        f"train.init_from: {run_dir} was trained with vocabulary "
        f"{storage.join(run_dir, V.RUN_VOCAB_DIR, manifest['file'])} (sha256 "
        f"{manifest['sha256'][:12]}...) but this run's is {src} (sha256 {want[:12]}...): "
        "the token ids would mean different tokens")


def init_params(state: dict, directory: storage.PathLike, abstract_params: Any = None,
                vocab=None) -> dict:
  """`state` with its parameters replaced by those of DIR's latest restoring checkpoint.

  state: the train state ({"step", "params", "opt_state", ...}); everything but "params"
  is kept (a fresh state's optimizer moments are zeros and its step 0).
  abstract_params: shapes, dtypes and shardings to restore into; default those of
  state["params"], so each device reads only its shards (no whole-model host copy).
  vocab: the new run's vocabulary, checked against DIR's (check_vocabulary).
  Raises InitFromError (DIR missing or without a checkpoint), ShapeMismatchError (names
  the parameter and both shapes) or RunVocabularyError.
  """
  ckpt_dir, run_dir = checkpoint_dirs(directory)
  check_vocabulary(run_dir, vocab)
  abstract = state["params"] if abstract_params is None else abstract_params
  try:
    step, params = checkpoints.restore_params(ckpt_dir, abstract)
  except FileNotFoundError as e:
    raise InitFromError(f"train.init_from: {e}") from e
  except checkpoints.ShapeMismatchError as e:
    raise checkpoints.ShapeMismatchError(f"train.init_from: {e}") from e
  if jax.process_index() == 0:
    print(f"initialised parameters from {directory} (step {step}); optimizer state fresh",
          flush=True)
  return {**state, "params": params}
