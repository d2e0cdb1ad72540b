"""Tasks over the embedded default corpus (no download): the stdlib as code and prose."""

import functools

import seqio

from codegen2_jax.data import objectives, sources
from codegen2_jax.data import vocab as V

DEFAULT_VOCAB_SIZE = 8192


def default_vocabulary() -> V.CodeGenVocabulary:
  """The vocabulary of the embedded-corpus tasks, trained on first use and then cached."""
  path = V.default_cache_dir() / "vocab" / f"stdlib_bpe_{DEFAULT_VOCAB_SIZE}.model"
  return V.CodeGenVocabulary(path, train_texts=sources.vocab_training_texts,
                             vocab_size=DEFAULT_VOCAB_SIZE)


def output_features(vocabulary) -> dict[str, seqio.Feature]:
  """Output features shared by every CodeGen2 task (see objectives)."""
  aux = seqio.PassThroughVocabulary(size=0)
  return {
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=False),
      "loss_weights": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      "prefix": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
      "objective": seqio.Feature(vocabulary=aux, add_eos=False, required=False),
  }


def codegen2_preprocessors(objective=objectives.codegen2_mixture) -> list:
  """text -> tokens -> split long documents -> objective."""
  return [
      functools.partial(seqio.preprocessors.rekey,
                        key_map={"targets": "text", "source": "source"}),
      seqio.preprocessors.tokenize,
      objectives.split_documents,
      objective,
  ]


VOCAB = default_vocabulary()
FEATURES = output_features(VOCAB)

for _name, _source in (("stdlib_code", sources.stdlib_code_source()),
                       ("stdlib_prose", sources.stdlib_prose_source())):
  if _name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(_name, source=_source, preprocessors=codegen2_preprocessors(),
                           output_features=FEATURES)

if "stdlib_demo" not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add("stdlib_demo", [("stdlib_code", 0.8), ("stdlib_prose", 0.2)])
