"""T5X-style command lines: repeatable `--gin_file=F` and `--gin.NAME=VALUE` overrides.

    python -m codegen2_jax.train --gin_file=gin/runs/demo_cpu.gin --model_dir=/tmp/run \
        --gin.TRAIN_STEPS=100 --gin.make_optimizer.weight_decay=0.0

Gin files are looked up as given, then relative to the repository root, then under
`gin/`. An override of a macro the files never define (`--gin.TRAIN_STEP=5`) or of an
unknown configurable or parameter fails before any work, naming the binding.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from pathlib import Path
from typing import Sequence

import gin

REPO_ROOT = Path(__file__).resolve().parent.parent
GIN_DIR = REPO_ROOT / "gin"

# Macros every run file defines (T5X convention); listed in the README.
STANDARD_MACROS = ("TRAIN_STEPS", "BATCH_SIZE", "SEQ_LEN", "CHECKPOINT_EVERY", "LOG_EVERY",
                   "SEED", "MIXTURE_OR_TASK_NAME")


def macros_help() -> str:
  """The standard macros and what they mean, for an entry point's --help."""
  return """Main gin macros (set in a run file, override with --gin.NAME=VALUE):
  MIXTURE_OR_TASK_NAME  seqio task or mixture to train on, e.g. 'stdlib_demo'
  TRAIN_STEPS           the step to train up to (a positive int)
  BATCH_SIZE            global batch in sequences; divides over hosts and data-parallel devices
  SEQ_LEN               tokens per packed row (also the model's max_len)
  CHECKPOINT_EVERY      steps between checkpoints (one is always written at the end)
  LOG_EVERY             steps between metric lines
  SEED                  model init and data order
Any configurable's parameter: --gin.train.eval_every=200, --gin.ModelConfig.n_layers=4,
--gin.make_optimizer.weight_decay=0.0 (see gin/runs/base.gin and gin/models/)."""


class GinConfigError(ValueError):
  """A gin file or binding on the command line is wrong (the message says which)."""


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Separates `--gin_file=F`, `--gin.X=Y` and the remaining arguments.

  Returns (gin_files, bindings 'X=Y', other_args). Both `--flag=value` and
  `--flag value` forms are accepted for --gin_file.
  """
  files, bindings, rest = [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    a = args[i]
    if a.startswith("--gin_file="):
      files.append(a.split("=", 1)[1])
    elif a == "--gin_file" and i + 1 < len(args):
      files.append(args[i + 1])
      i += 1
    elif a.startswith("--gin."):
      if "=" not in a:
        raise GinConfigError(f"gin override {a!r} has no value; write --gin.NAME=VALUE")
      name, value = a[len("--gin."):].split("=", 1)
      bindings.append(f"{name} = {value}")
    else:
      rest.append(a)
    i += 1
  return files, bindings, rest


def resolve_gin_file(name: str) -> str:
  """Path of a gin file given as-is, relative to the repo root, or under gin/."""
  for candidate in (Path(name), REPO_ROOT / name, GIN_DIR / name):
    if candidate.is_file():
      return str(candidate)
  raise GinConfigError(f"gin file {name!r} not found (looked in {os.getcwd()}, {REPO_ROOT} "
                       f"and {GIN_DIR})")


def _defined_macros() -> set[str]:
  return {scope for (scope, selector) in gin.config._CONFIG if selector == "gin.macro"}


def _known_configurables() -> list[str]:
  return sorted({selector.rsplit(".", 1)[-1] for selector, _ in gin.config._REGISTRY.items()})


def _suggest(name: str) -> str:
  """'; did you mean ...?' for a misspelt configurable or parameter name, or ''."""
  configurable, _, param = name.rpartition(".")
  found = gin.config._REGISTRY.get_match(configurable) if configurable else None
  if found is None:
    options, wanted = _known_configurables(), configurable
  else:
    import inspect
    try:
      options = list(inspect.signature(found.wrapped).parameters)
    except (TypeError, ValueError):
      options = []
    wanted = param
  close = difflib.get_close_matches(wanted, options, n=3)
  return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def parse(gin_files: Sequence[str], bindings: Sequence[str],
          texts: dict[str, str] | None = None, skip_unknown: bool = False) -> None:
  """Parses the files, then the gin `texts` ({name for errors: gin text}, e.g. a run's
  config.gin read from gs://), then checks and applies the overrides (see module
  docstring). skip_unknown: bindings of configurables that are not registered are ignored
  in `texts` (see drop_missing_imports).
  """
  with gin.unlock_config():
    gin.clear_config()
  # Includes are written from the repository root ('gin/models/small.gin'); try it first
  # (a miss on each prefix is logged by gin as an error).
  if str(REPO_ROOT) not in gin.config._LOCATION_PREFIXES:
    gin.config._LOCATION_PREFIXES.insert(0, str(REPO_ROOT))
  files = [resolve_gin_file(f) for f in gin_files]
  try:
    gin.parse_config_files_and_bindings(files, None, finalize_config=False)
  except (ValueError, KeyError, IOError, ImportError) as e:
    raise GinConfigError(f"error in gin files {files}: {e}") from e
  for name, text in (texts or {}).items():
    try:
      gin.parse_config(text, skip_unknown=skip_unknown)
    except (ValueError, KeyError, IOError, ImportError) as e:
      raise GinConfigError(f"error in {name}: {e}") from e
  macros = _defined_macros()
  for binding in bindings:
    name = binding.split("=", 1)[0].strip()
    if "." not in name and "/" not in name:  # a macro
      if name not in macros:
        close = difflib.get_close_matches(name, sorted(macros), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise GinConfigError(f"unknown gin binding `{name}`: no gin file defines this "
                             f"macro{hint} (defined: {', '.join(sorted(macros))})")
    try:
      gin.parse_config(binding)
    except (ValueError, KeyError) as e:
      first_line = str(e).strip().splitlines()[0]
      raise GinConfigError(f"unknown gin binding `{name}`: {first_line}{_suggest(name)}"
                           ) from e


def macro(name: str):
  """Value of a macro defined by the parsed gin files."""
  return gin.query_parameter(f"{name}/macro.value")


# `import a.b`, `import a.b as c` and `from a.b import c` lines of a gin file.
_IMPORT_LINE = re.compile(
    r"^[ \t]*(?:import[ \t]+([\w.]+)|from[ \t]+([\w.]+)[ \t]+import[ \t]+(\w+))[^\n]*$",
    re.MULTILINE)


def _import(module: str, name: str | None = None) -> None:
  """Imports `module` (`from module import name`: the submodule, else the attribute)."""
  if name is None:
    importlib.import_module(module)
    return
  try:
    importlib.import_module(f"{module}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{module}.{name}":  # a submodule that exists but fails to import
      raise
    if not hasattr(importlib.import_module(module), name):
      raise ImportError(f"cannot import name {name!r} from {module!r}") from None


def drop_missing_imports(text: str) -> tuple[str, list[tuple[str, str]]]:
  """`text` (gin) without its import lines whose module does not import in this
  interpreter, and [(module, why)] for each one dropped.

  A run's config.gin names the modules that registered its tasks (`import my_tasks`);
  restoring the model elsewhere needs none of them. Parse the result with
  skip_unknown=True so the bindings of the configurables they would register are
  skipped too.

  For example, where my_tasks is not installed:

      import my_tasks             ->  # import my_tasks  (not importable here)
      import tasks                ->  import tasks
      my_tasks.Filter.min_len = 5 ->  my_tasks.Filter.min_len = 5  (skipped when parsed)
  """
  dropped = []

  def check(m: re.Match) -> str:
    module, name = (m.group(1), None) if m.group(1) else (m.group(2), m.group(3))
    if module == "__gin__":  # gin's own feature flags (dynamic_registration)
      return m.group(0)
    try:
      _import(module, name)
      return m.group(0)
    except Exception as e:  # noqa: BLE001  (a user's module may fail in any way)
      what = f"{module}.{name}" if name else module
      dropped.append((what, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"))
      return f"# {m.group(0).strip()}  (not importable here)"

  return _IMPORT_LINE.sub(check, text), dropped
