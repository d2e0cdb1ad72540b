"""Helpers to register CodeGen2 seqio tasks and mixtures (ours in `tasks/`, and users').

    import seqio
    from codegen2_jax.data import files, registry

    registry.register_task("my_rust", files.tree_source("~/src/rust", [".rs"], "my rust"))
    seqio.MixtureRegistry.add("my_mix", [("my_rust", 0.3), ("stdlib_code", 0.7)])

A task reads {'source', 'text'} examples, tokenizes `text`, numbers the passes over the
documents (data.epochs), splits long documents so that nothing is trimmed, and applies an
objective preprocessor (default: the CodeGen2 mixture of causal LM and file-level span
corruption). All tasks share `output_features`. seqio's offline cache (data.cache) holds
the tokenized documents: everything after tokenization (pass counting, splitting to the
run's SEQ_LEN, the objectives and their fresh randomness every pass) runs online.

Registering a name again with the same definition returns the registered task or mixture
(a module imported twice, under two names or by gin); with a different definition it is
a ValueError naming what differs (`fingerprint` says what "same" means).

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
import hashlib
import os
import types

import gin
import numpy as np
import seqio
import tensorflow as tf

from codegen2_jax.data import cache, epochs, files, objectives, sources
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


def preprocessors(objective=objectives.codegen2_mixture, task: str = "",
                  cache: bool = True) -> list:
  """text -> tokens -> [seqio's cache] -> count passes -> split long documents -> objective.

  Long documents are split after the cache, not before: the split depends on the run's
  SEQ_LEN (and the span settings), and seqio refuses a preprocessor that takes
  `sequence_length` before its CacheDatasetPlaceholder, so one cache serves every SEQ_LEN.
  """
  steps = [
      # The pass markers of data.epochs ride along until count_epochs drops them.
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"targets": "text", "source": "source",
                                 epochs.EPOCH_END: epochs.EPOCH_END}),
      # Batched (V.tokenize_documents says why not seqio's tokenize); like seqio's with
      # copy_pretokenized=False: nothing reads the text again, and it would double the cache.
      V.tokenize_documents,
  ]
  if cache:
    steps.append(seqio.CacheDatasetPlaceholder())
  return steps + [
      functools.partial(epochs.count_epochs, task=task),
      objectives.split_documents,
      objective,
  ]


@gin.configurable(module="registry")
def task_shuffle_buffer(size: int = 256) -> int:
  """Examples in each task's shuffle buffer after its objectives (seqio's per-task shuffle,
  whose own default is 1000). It mixes the pieces of a long document, and the sequences
  of neighbouring documents, over `size` of the task's sequences; the source has already
  shuffled the documents. A checkpoint's data state holds every task's buffer (a mixture
  of 19 tasks: 19 buffers of sequences up to SEQ_LEN, with all their features), so the
  state grows with size x tasks (README, "Resume without replay")."""
  if size < 1:
    raise ValueError(f"registry.task_shuffle_buffer.size={size} must be >= 1")
  return size


class CodeGenTask(seqio.Task):
  """A seqio Task that counts passes over its cached data too (the cache is read through
  epochs.EpochMarkedSource, which ends each host's shard with one pass marker), and whose
  shuffle buffer is gin's `task_shuffle_buffer` unless the caller passes one."""

  def get_dataset(self, sequence_length=None, split: str = "train", *args, **kwargs):
    if len(args) < 3 and kwargs.get("shuffle_buffer_size") is None:
      kwargs["shuffle_buffer_size"] = task_shuffle_buffer()
    with epochs.building(split):  # count_epochs names the split if it has no document
      return super().get_dataset(sequence_length, split, *args, **kwargs)

  def _get_cached_source(self, split: str, file_shuffle_buffer_size=None) -> seqio.DataSource:
    cache.check_split(self, split)
    return epochs.EpochMarkedSource(super()._get_cached_source(split, file_shuffle_buffer_size))


# (kind, name) -> (definition, source object) of what register_task / register_mixture added.
_DEFINITIONS: dict[tuple[str, str], tuple[dict, object]] = {}


def _check_same(kind: str, name: str, definition: dict, source=None) -> None:
  """Raises ValueError unless `name` was registered here with an equal definition."""
  known = _DEFINITIONS.get((kind, name))
  if known is None:
    raise ValueError(f"{kind} {name!r} is already registered (not by registry.register_"
                     f"{kind}), so it cannot be compared; use another name")
  old, old_source = known
  differs = [k for k in definition if definition[k] != old.get(k)
             and not (k == "source" and source is not None and source is old_source)]
  if differs:
    raise ValueError(f"{kind} {name!r} is already registered with another definition "
                     f"(its {' and '.join(differs)} differ); use another name (or remove "
                     f"it first: seqio.{'Task' if kind == 'task' else 'Mixture'}Registry"
                     f".remove({name!r}))")


def register_task(name: str, source: seqio.DataSource, objective=objectives.codegen2_mixture,
                  vocabulary: seqio.Vocabulary | str | None = None) -> seqio.Task:
  """Registers CodeGen2 task `name` over `source` and returns it.

  `vocabulary`: a seqio Vocabulary, or a task family ('stdlib', 'stack', 'pile') whose
  gin setting `family_vocabulary` decides it when the task is used; default 'stdlib'.
  Registering `name` again returns the registered task when the definition is the same
  (see `fingerprint`), and raises ValueError naming what differs otherwise.
  The task may be cached offline (data.cache) unless `source` forbids caching.
  """
  # files.FileSource says caching_permitted=False only because it predates the cache;
  # nothing in its data forbids it. Other sources decide for themselves.
  permitted = source.caching_permitted or isinstance(source, files.FileSource)
  steps = preprocessors(objective, task=name, cache=permitted)
  features = output_features(vocabulary)
  definition = {"source": fingerprint(source), "preprocessors": fingerprint(steps),
                "output features": fingerprint(features)}
  if name in seqio.TaskRegistry.names():
    _check_same("task", name, definition, source)
    return seqio.TaskRegistry.get(name)
  task = seqio.TaskRegistry.add(
      name, source=epochs.EpochMarkedSource(source, caching_permitted=permitted),
      preprocessors=steps, output_features=features, task_cls=CodeGenTask)
  _DEFINITIONS[("task", name)] = (definition, source)
  return task


def register_mixture(name: str, tasks_and_rates) -> seqio.Mixture:
  """Registers mixture `name` of [(task, rate), ...] (a rate: a number or a function of
  the task) and returns it; the same name again: as register_task."""
  tasks_and_rates = list(tasks_and_rates)

  def task_name(t):
    return t if isinstance(t, str) else t.name

  definition = {"tasks and rates": tuple(
      (task_name(t[0]), fingerprint(t[1])) if isinstance(t, (tuple, list))
      else (task_name(t), None) for t in tasks_and_rates)}
  if name in seqio.MixtureRegistry.names():
    _check_same("mixture", name, definition)
    return seqio.MixtureRegistry.get(name)
  mixture = seqio.MixtureRegistry.add(name, tasks_and_rates)
  _DEFINITIONS[("mixture", name)] = (definition, None)
  return mixture


# ----------------------------------------------------------------------------------------
# What makes two registrations "the same"

_PLAIN = (type(None), bool, int, float, complex, str, bytes)
_MODULE_FUNCTIONS: dict = {}


def fingerprint(obj, _path: tuple = ()):
  """A comparable description of what `obj` computes, equal for objects built the same
  way by the same code (a task module executed twice), whatever their identity.

  Functions: qualified name, bytecode and constants, defaults, the values they close
  over, and the plain values and same-module functions they read as globals (not the
  module's name, so one file imported under two names agrees with itself).
  functools.partial: function and arguments. Vocabularies: their kind and file or task
  family (not their lazily loaded state). Other objects: class and attributes as they
  are now (register_* takes them at registration, before any use). Containers: items.
  """
  if isinstance(obj, _PLAIN):
    return obj
  if id(obj) in _path:
    return ("cycle", type(obj).__qualname__)
  path = _path + (id(obj),)
  fp = functools.partial(fingerprint, _path=path)
  if len(path) > 40:
    return ("deep", type(obj).__qualname__)
  if isinstance(obj, (list, tuple)):
    return (type(obj).__name__, tuple(fp(x) for x in obj))
  if isinstance(obj, dict):
    return ("dict", tuple((repr(k), fp(v)) for k, v in sorted(obj.items(),
                                                               key=lambda kv: repr(kv[0]))))
  if isinstance(obj, (set, frozenset)):
    return ("set", tuple(sorted((fp(x) for x in obj), key=repr)))
  if isinstance(obj, functools.partial):
    return ("partial", fp(obj.func), fp(obj.args), fp(obj.keywords))
  if isinstance(obj, types.FunctionType) and hasattr(obj, "__wrapped__"):
    # A decorator's wrapper (gin.configurable, seqio.map_over_dataset...): the decorated
    # function says what it does; the wrapper's closure holds the library's own state.
    return ("wrapped", obj.__qualname__, fp(obj.__wrapped__))
  if isinstance(obj, types.FunctionType) and not obj.__closure__ and obj in _MODULE_FUNCTIONS:
    return _MODULE_FUNCTIONS[obj]
  if isinstance(obj, types.FunctionType):
    cells = []
    for cell in obj.__closure__ or ():
      try:
        cells.append(fp(cell.cell_contents))
      except ValueError:  # an empty cell (a name assigned later in the enclosing scope)
        cells.append(("empty cell",))
    out = ("function", obj.__qualname__, _code(obj.__code__), fp(obj.__defaults__),
           fp(obj.__kwdefaults__), tuple(cells), fp(_globals_read(obj)))
    if not obj.__closure__ and "<locals>" not in obj.__qualname__:
      _MODULE_FUNCTIONS[obj] = out  # module functions do not change: describe them once
    return out
  if isinstance(obj, types.MethodType):
    return ("method", fp(obj.__func__), fp(obj.__self__))
  if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType)):
    return (type(obj).__name__, getattr(obj, "__module__", None),
            getattr(obj, "__qualname__", obj.__name__))
  if isinstance(obj, seqio.Vocabulary):
    return _vocabulary_fingerprint(obj)
  if isinstance(obj, np.ndarray):
    return ("ndarray", str(obj.dtype), obj.shape, hashlib.sha1(obj.tobytes()).hexdigest())
  if isinstance(obj, tf.dtypes.DType):
    return ("dtype", obj.name)
  if hasattr(obj, "__dict__"):
    return ("object", type(obj).__module__, type(obj).__qualname__, fp(dict(vars(obj))))
  return ("opaque", type(obj).__module__, type(obj).__qualname__)


def _code(code: types.CodeType):
  return (code.co_code, code.co_names, tuple(
      _code(c) if isinstance(c, types.CodeType) else fingerprint(c) for c in code.co_consts))


def _names_read(code: types.CodeType) -> set[str]:
  names = set(code.co_names)
  for c in code.co_consts:
    if isinstance(c, types.CodeType):
      names |= _names_read(c)
  return names


def _globals_read(fn: types.FunctionType) -> dict:
  """The globals `fn` may read that are plain values or functions of its own module."""
  out = {}
  for name in sorted(_names_read(fn.__code__)):
    value = fn.__globals__.get(name)
    if isinstance(value, _PLAIN) or (isinstance(value, tuple)
                                      and all(isinstance(x, _PLAIN) for x in value)):
      out[name] = value
    elif (isinstance(value, (types.FunctionType, functools.partial))
          and getattr(value, "__module__", None) == fn.__module__ and value is not fn):
      out[name] = value
  return out


def _vocabulary_fingerprint(v: seqio.Vocabulary):
  if isinstance(v, FamilyVocabulary):
    return ("FamilyVocabulary", v.family)
  kind = (type(v).__module__, type(v).__qualname__)
  if isinstance(v, seqio.SentencePieceVocabulary):
    return kind + (v.sentencepiece_model_file, v.extra_ids)
  if isinstance(v, V.HfTokenizerVocabulary):
    return kind + (v.tokenizer_file,)
  return kind + (fingerprint({k: x for k, x in vars(v).items() if isinstance(x, _PLAIN)}),)
