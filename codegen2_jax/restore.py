"""Restore a trained model for inference: parameters only, onto this process's devices.

Used by `sample` and `eval`. A checkpoint directory is a run's model_dir (or its
checkpoints/ folder), local or gs://; the model shape comes from the run's `config.gin`
unless gin files are given. The vocabulary is the run's own copy (model_dir/vocab/, see
data.vocab), or for runs older than that, the one of the run's MIXTURE_OR_TASK_NAME.

Restoring needs only the model_dir: where config.gin imports a module that is not
importable here (the user's task module, `import my_tasks`), the import and the bindings
of what it would register are skipped, with one warning line naming the module.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Sequence

from etils import epath

from codegen2_jax import gin_config, storage


class RestoreError(Exception):
  """The checkpoint or its configuration cannot be used (the message says why)."""


@dataclasses.dataclass
class Restored:
  model: Any          # CodeGen (nnx.Module) with the checkpoint's parameters
  vocab: Any          # the run's seqio vocabulary (None if the config names no task)
  step: int
  run_dir: epath.Path


def run_dirs(path: storage.PathLike) -> tuple[epath.Path, epath.Path]:
  """(checkpoints dir, run dir) for a model_dir or its checkpoints/ subfolder."""
  p = storage.path(path)
  if (p / "checkpoints").is_dir():
    return p / "checkpoints", p
  return p, p.parent


def parse_run_config(checkpoint_dir: storage.PathLike, gin_files: Sequence[str] = (),
                     bindings: Sequence[str] = ()) -> tuple[epath.Path, epath.Path]:
  """Parses the run's config.gin (or `gin_files`) plus `bindings`; returns run_dirs."""
  ckpt_dir, run_dir = run_dirs(checkpoint_dir)
  if not ckpt_dir.is_dir():
    raise RestoreError(f"no checkpoint directory at {ckpt_dir}")
  import tasks  # noqa: F401  (the run's task names its vocabulary)
  from codegen2_jax import trainer  # noqa: F401  (config.gin binds trainer settings)
  texts, dropped = {}, []
  if not gin_files:
    config = run_dir / "config.gin"
    if not config.is_file():
      raise RestoreError(f"{config} not found; pass --gin_file for the model")
    text, dropped = gin_config.drop_missing_imports(config.read_text())
    texts[str(config)] = text
    for module, why in dropped:
      print(f"warning: {config} imports {module}, which does not import here ({why}); "
            "restoring without it (the model and vocabulary come from the run)",
            file=sys.stderr, flush=True)
  try:
    gin_config.parse(list(gin_files), list(bindings), texts=texts,
                     skip_unknown=bool(dropped))
  except gin_config.GinConfigError as e:
    raise RestoreError(str(e)) from e
  return ckpt_dir, run_dir


def load(checkpoint_dir: storage.PathLike, gin_files: Sequence[str] = (),
         bindings: Sequence[str] = (), step: int | None = None) -> Restored:
  """The model (and vocabulary) of a run's checkpoint `step` (default: latest)."""
  ckpt_dir, run_dir = parse_run_config(checkpoint_dir, gin_files, bindings)
  from flax import nnx

  from codegen2_jax import checkpoints
  from codegen2_jax.models.codegen import CodeGen, ModelConfig

  cfg = ModelConfig()
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CodeGen(cfg, nnx.Rngs(0))), nnx.Param)
  try:
    # The latest step that restores; a damaged one is skipped with a line on stderr.
    got_step, params = checkpoints.restore_params(ckpt_dir, abstract, step)
  except (FileNotFoundError, checkpoints.CheckpointError) as e:
    raise RestoreError(str(e)) from e
  from codegen2_jax.data import vocab as V
  try:
    vocab = V.load_from_run(str(run_dir))
  except V.RunVocabularyError as e:
    raise RestoreError(str(e)) from e
  if vocab is None:  # a run from before runs carried their vocabulary
    try:
      name = gin_config.macro("MIXTURE_OR_TASK_NAME")
    except (KeyError, ValueError):
      name = None
    if name:
      import seqio
      vocab = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
  return Restored(nnx.merge(graphdef, params), vocab, int(got_step), run_dir)
