"""Helpers to register CodeGen2 seqio tasks and mixtures (ours in `tasks/`, and users').

    import seqio
    from codegen2_jax.data import files, registry

    registry.register_task("my_rust", files.tree_source("~/src/rust", [".rs"], "my rust"))
    seqio.MixtureRegistry.add("my_mix", [("my_rust", 0.3), ("stdlib_code", 0.7)])

A task reads {'source', 'text'} examples, numbers the passes over them (data.epochs),
tokenizes `text`, splits long documents so that
nothing is trimmed, and applies an objective preprocessor (default: the CodeGen2 mixture of
causal LM and file-level span corruption). All tasks share `output_features`.
"""

from __future__ import annotations

import functools

import seqio

from codegen2_jax.data import epochs, objectives, sources
from codegen2_jax.data import vocab as V

DEFAULT_VOCAB_SIZE = 8192


@functools.lru_cache(maxsize=None)
def default_vocabulary() -> V.CodeGenVocabulary:
  """The embedded-corpus vocabulary: trained on the stdlib on first use, then cached."""
  path = V.default_cache_dir() / "vocab" / f"stdlib_bpe_{DEFAULT_VOCAB_SIZE}.model"
  return V.CodeGenVocabulary(path, train_texts=sources.vocab_training_texts,
                             vocab_size=DEFAULT_VOCAB_SIZE)


def output_features(vocabulary: seqio.Vocabulary | None = None) -> dict[str, seqio.Feature]:
  """Output features shared by every CodeGen2 task (see objectives)."""
  vocabulary = vocabulary or default_vocabulary()
  aux = seqio.PassThroughVocabulary(size=0)
  return {
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False),
      "loss_weights": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      "prefix": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      "objective": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      # Which pass over its task (1, 2, ...) and which task (epochs.task_id) each token
      # came from: host-side bookkeeping for multi-epoch runs, never fed to the model.
      "epoch": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      "task": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
  }


def preprocessors(objective=objectives.codegen2_mixture, task: str = "") -> list:
  """count passes -> text -> tokens -> split long documents -> objective."""
  return [
      functools.partial(epochs.count_epochs, task=task),
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"targets": "text", "source": "source", "epoch": "epoch",
                                 "task": "task"}),
      seqio.preprocessors.tokenize,
      objectives.split_documents,
      objective,
  ]


def register_task(name: str, source: seqio.DataSource, objective=objectives.codegen2_mixture,
                  vocabulary: seqio.Vocabulary | None = None) -> seqio.Task:
  """Registers (or returns the already registered) CodeGen2 task `name` over `source`."""
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  return seqio.TaskRegistry.add(name, source=epochs.EpochMarkedSource(source),
                                preprocessors=preprocessors(objective, task=name),
                                output_features=output_features(vocabulary))


def register_mixture(name: str, tasks_and_rates) -> seqio.Mixture:
  """Registers (or returns) mixture `name` of [(task, rate), ...]."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  return seqio.MixtureRegistry.add(name, list(tasks_and_rates))
