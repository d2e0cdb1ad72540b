"""Registering tasks and mixtures: the same definition again is a no-op, a different one
raises naming the name; tasks are cacheable after tokenization."""

import functools
import importlib.util

import pytest
import seqio

from codegen2_jax.data import epochs, files, objectives, registry

MODULE = '''
import functools
from codegen2_jax.data import files, objectives, registry

def rate(task, share=0.5):
  return share * 2

registry.register_task("reg_tree", files.tree_source({root!r}, [".py"], "reg tree"),
                       objective=objectives.single_objective("causal_lm"), vocabulary="stack")
registry.register_task("reg_other", files.tree_source({root!r}, [".rs"], "reg rust"))
registry.register_mixture("reg_mix", [("reg_tree", functools.partial(rate, share=0.25)),
                                      ("reg_other", lambda task: 0.75)])
'''


def _exec_module(path, name):
  """Executes the file at `path` as a new module `name` (a module imported twice)."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture
def user_module(tmp_path):
  path = tmp_path / "reg_mod.py"
  path.write_text(MODULE.format(root=str(tmp_path / "src")))
  yield path
  for name in ("reg_tree", "reg_other"):
    seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.remove("reg_mix")


def test_the_same_module_executed_twice_registers_once(user_module):
  _exec_module(user_module, "reg_mod_a")
  task, mix = seqio.TaskRegistry.get("reg_tree"), seqio.MixtureRegistry.get("reg_mix")
  _exec_module(user_module, "reg_mod_b")  # another name, new function objects: same code
  assert seqio.TaskRegistry.get("reg_tree") is task
  assert seqio.MixtureRegistry.get("reg_mix") is mix


@pytest.mark.parametrize("edit, what", [
    (('[".py"], "reg tree"', '[".pyi"], "reg tree"'), "source"),
    (('"reg tree"', '"reg trees"'), "source"),
    (('single_objective("causal_lm")', 'single_objective("prefix_lm")'), "preprocessors"),
    (('vocabulary="stack"', 'vocabulary="pile"'), "output features"),
    (("share=0.25", "share=0.3"), "tasks and rates"),
    (("lambda task: 0.75", "lambda task: 0.7"), "tasks and rates"),
    (("return share * 2", "return share * 3"), "tasks and rates"),
])
def test_a_different_definition_raises_naming_it(user_module, edit, what):
  _exec_module(user_module, "reg_mod_c")
  user_module.write_text(user_module.read_text().replace(*edit))
  with pytest.raises(ValueError, match=f"already registered with another definition "
                                       rf"\(its {what} differ\)"):
    _exec_module(user_module, "reg_mod_d")


def test_register_task_directly_again(tmp_path):
  src = files.tree_source(tmp_path, [".py"], "direct")
  task = registry.register_task("reg_direct", src)
  try:
    assert registry.register_task("reg_direct", src) is task
    assert registry.register_task("reg_direct", files.tree_source(tmp_path, [".py"],
                                                                  "direct")) is task
    with pytest.raises(ValueError, match="'reg_direct' is already registered .*source"):
      registry.register_task("reg_direct", files.tree_source(tmp_path / "x", [".py"],
                                                             "direct"))
  finally:
    seqio.TaskRegistry.remove("reg_direct")


def test_a_name_registered_by_seqio_itself_raises(tmp_path):
  seqio.TaskRegistry.add("reg_plain", source=files.tree_source(tmp_path, [".py"], "p"),
                         output_features=registry.output_features())
  try:
    with pytest.raises(ValueError, match="'reg_plain' is already registered .not by"):
      registry.register_task("reg_plain", files.tree_source(tmp_path, [".py"], "p"))
  finally:
    seqio.TaskRegistry.remove("reg_plain")


def test_fingerprint_sees_closures_partials_and_defaults():
  fp = registry.fingerprint

  def make(k):
    return lambda x: x + k
  assert fp(make(1)) == fp(make(1)) and fp(make(1)) != fp(make(2))
  assert fp(functools.partial(make, 1)) != fp(functools.partial(make, 2))

  def f(x, y=1):
    return x + y

  def g(x, y=2):
    return x + y
  assert fp(f) != fp(g)  # defaults (and names) differ
  assert fp([1, {"a": (2, 3)}]) == fp([1, {"a": (2, 3)}]) != fp([1, {"a": (2, 4)}])


def test_tasks_cache_after_tokenization_and_count_passes_after_the_cache(tmp_path):
  task = registry.register_task("reg_cacheable", files.tree_source(tmp_path, [".py"], "c"))
  try:
    steps = task.preprocessors
    place = [i for i, p in enumerate(steps) if isinstance(p, seqio.CacheDatasetPlaceholder)]
    assert task.supports_caching and task.source.caching_permitted and place == [2]
    after = steps[place[0] + 1:]
    assert after[0].func is epochs.count_epochs and after[1] is objectives.split_documents
  finally:
    seqio.TaskRegistry.remove("reg_cacheable")


def test_the_task_shuffle_buffer_is_a_gin_setting(vocab):
  # Long documents split into many pieces at 128 tokens: a buffer of 1 keeps each
  # document's pieces together, a larger one mixes them (and the checkpoint's data state
  # holds one buffer per task, so its size is the user's choice).
  import gin
  import tasks  # noqa: F401

  def sources(size):
    with gin.unlock_config():
      gin.bind_parameter("registry.task_shuffle_buffer.size", size)
    try:
      ds = seqio.get_mixture_or_task("stdlib_code").get_dataset(
          {"targets": 128}, split="train", shuffle=True, seed=1, num_epochs=1)
      return [ex["source"] for ex in ds.take(300).as_numpy_iterator()]
    finally:
      gin.clear_config()

  def changes(names):
    return sum(a != b for a, b in zip(names, names[1:]))

  together, mixed = sources(1), sources(256)
  assert changes(together) < len(together) // 4 < changes(mixed)
  with gin.unlock_config():
    gin.bind_parameter("registry.task_shuffle_buffer.size", 0)
  try:
    with pytest.raises(ValueError, match="task_shuffle_buffer.size=0"):
      seqio.get_mixture_or_task("stdlib_code").get_dataset({"targets": 128}, split="train")
  finally:
    gin.clear_config()
