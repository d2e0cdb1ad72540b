"""Helpers to register CodeGen2 seqio tasks and mixtures (ours in `tasks/`, and users').

    import seqio
    from codegen2_jax.data import files, registry

    registry.register_task("my_rust", files.tree_source("~/src/rust", [".rs"], "my rust"))
    seqio.MixtureRegistry.add("my_mix", [("my_rust", 0.3), ("stdlib_code", 0.7)])

A task reads {'source', 'text'} examples, numbers the passes over them (data.epochs),
tokenizes `text`, splits long documents so that
nothing is trimmed, and applies an objective preprocessor (default: the CodeGen2 mixture of
causal LM and file-level span corruption). All tasks share `output_features`.

Vocabulary per task family, a gin setting (`family_vocabulary`):

    stdlib   the embedded corpus (and user tasks by default)   'stdlib_spm'
    stack    The Stack                                          'codegen2'
    pile     The Pile                                           'codegen2'

    --gin.registry.family_vocabulary.stack="'stdlib_spm'"      # or a path to a
    --gin.registry.family_vocabulary.stdlib="'/x/tokenizer.json'"  # tokenizer.json / .model

Tasks register when `tasks` is imported, before the entry points parse gin (gin must know
the tasks' configurables to parse), and seqio keeps the Vocabulary object a task was
registered with. So a task holds a `FamilyVocabulary`, which looks up the family's
setting each time it is used (by then gin is parsed) and delegates to that vocabulary.
"""

from __future__ import annotations

import functools
import os

import gin
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


FAMILIES = ("stdlib", "stack", "pile")


@gin.configurable(module="registry")
def family_vocabulary(family: str, stdlib: str = "stdlib_spm", stack: str = "codegen2",
                      pile: str = "codegen2") -> str:
  """The vocabulary setting of a task family: 'codegen2' (the released CodeGen2
  tokenizer), 'stdlib_spm' (the SentencePiece trained on the stdlib), or a path to a
  tokenizer.json or SentencePiece .model file."""
  settings = {"stdlib": stdlib, "stack": stack, "pile": pile}
  if family not in settings:
    raise ValueError(f"unknown task family {family!r} (families: {', '.join(FAMILIES)})")
  return settings[family]


@functools.lru_cache(maxsize=None)
def vocabulary_from_setting(setting: str) -> seqio.Vocabulary:
  """The vocabulary a `family_vocabulary` setting names (one object per setting)."""
  if setting == "codegen2":
    return V.codegen2_tokenizer()
  if setting == "stdlib_spm":
    return default_vocabulary()
  path = os.path.expanduser(setting)
  if path.endswith(".json"):
    return V.HfTokenizerVocabulary(path)
  if path.endswith(".model"):
    return V.CodeGenVocabulary(path)
  raise ValueError(f"unknown vocabulary {setting!r}: use 'codegen2', 'stdlib_spm', or a "
                   "path to a tokenizer.json or a SentencePiece .model file")


class FamilyVocabulary(seqio.Vocabulary):
  """The vocabulary gin sets for a task family, looked up at each use (see the module
  docstring); everything is delegated to it (`resolved`)."""

  def __init__(self, family: str):
    if family not in FAMILIES:
      raise ValueError(f"unknown task family {family!r} (families: {', '.join(FAMILIES)})")
    super().__init__(extra_ids=0)
    self.family = family

  @property
  def resolved(self) -> seqio.Vocabulary:
    return vocabulary_from_setting(family_vocabulary(self.family))

  def __getattr__(self, name):  # only for what this class lacks: special_ids, tokenizer...
    if name.startswith("__") or name == "family":  # copy/pickle probe before __init__
      raise AttributeError(name)
    return getattr(self.resolved, name)

  eos_id = property(lambda self: self.resolved.eos_id)
  unk_id = property(lambda self: self.resolved.unk_id)
  pad_id = property(lambda self: self.resolved.pad_id)
  bos_id = property(lambda self: self.resolved.bos_id)
  vocab_size = property(lambda self: self.resolved.vocab_size)
  _base_vocab_size = property(lambda self: self.resolved._base_vocab_size)

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def _encode(self, s):
    return self.resolved._encode(s)

  def _decode(self, ids):
    return self.resolved._decode(ids)

  def _encode_tf(self, s):
    return self.resolved._encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolved._decode_tf(ids)

  def __eq__(self, other):
    return self.resolved == getattr(other, "resolved", other)

  def __hash__(self):
    return hash(("FamilyVocabulary", self.family))

  def __str__(self):
    return f"FamilyVocabulary({self.family!r} -> {family_vocabulary(self.family)!r})"


def output_features(vocabulary: seqio.Vocabulary | str | None = None
                    ) -> dict[str, seqio.Feature]:
  """Output features shared by every CodeGen2 task (see objectives). `vocabulary`: a
  seqio Vocabulary or a task family name (default 'stdlib')."""
  if vocabulary is None or isinstance(vocabulary, str):
    vocabulary = FamilyVocabulary(vocabulary or "stdlib")
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
                  vocabulary: seqio.Vocabulary | str | None = None) -> seqio.Task:
  """Registers (or returns the already registered) CodeGen2 task `name` over `source`.

  `vocabulary`: a seqio Vocabulary, or a task family ('stdlib', 'stack', 'pile') whose
  gin setting `family_vocabulary` decides it when the task is used; default 'stdlib'.
  """
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
