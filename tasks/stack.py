"""The Stack (deduplicated, v1.1 layout): one task per language of CodeGen2's 19.

Files: `<stack dir>/<language>/*.parquet` with a `content` column and the licence columns
`max_{stars,issues,forks}_repo_licenses` (the layout of bigcode/the-stack-dedup's `data/`
folder). Tasks `stack_<name>`; mixture `stack_code` over all 19 at `language_rates`.

Licences: CodeGen2's model card trains on "the stricter permissive subset of the
deduplicated Stack v1.1". The Stack already holds only files whose repository licences
are on bigcode's permissive list (about 190 SPDX names: huggingface.co/datasets/
bigcode-data/license_list, permissive_licenses.txt; The Stack paper, arXiv 2211.15533).
Salesforce did not publish its stricter list, so ours (`PERMISSIVE_LICENSES`, gin
`accepted_licenses.licenses`) keeps the plain notice-only software licences of bigcode's
list (MIT, BSD, Apache-2.0, ISC, zlib, Boost, public-domain dedications and a few more)
and leaves out the rest (content licences such as CC-BY, licences with advertising or
same-licence clauses such as BSD-4-Clause, OpenSSL, MS-PL, Artistic, Ruby, and joke
licences such as WTFPL). A document is kept when every non-empty licence column lists
only accepted licences and at least one column is non-empty; dropped documents are
counted in a log line per task.
"""

import functools
import os

import gin

from codegen2_jax import storage
from codegen2_jax.data import files, registry
from tasks.paths import data_dirs

# task suffix -> directory name in The Stack (the 19 languages of the CodeGen2 model card)
LANGUAGES = {
    "c": "c", "cpp": "c++", "c_sharp": "c-sharp", "dart": "dart", "go": "go",
    "java": "java", "javascript": "javascript", "kotlin": "kotlin", "lua": "lua",
    "php": "php", "python": "python", "ruby": "ruby", "rust": "rust",
    "scala": "scala", "shell": "shell", "sql": "sql", "swift": "swift",
    "typescript": "typescript", "vue": "vue",
}

# A stricter subset of bigcode's permissive list (see the module docstring).
PERMISSIVE_LICENSES = (
    "MIT", "MIT-0", "X11", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause",
    "BSD-3-Clause-Clear", "0BSD", "ISC", "Zlib", "BSL-1.0", "PostgreSQL", "NCSA",
    "UPL-1.0", "Python-2.0", "PSF-2.0", "Unlicense", "CC0-1.0",
)


@gin.configurable(module="tasks.stack")
def accepted_licenses(licenses=PERMISSIVE_LICENSES) -> tuple[str, ...] | None:
  """The licence names a Stack document's licence columns may list; None reads every row
  (and then parquet files need no licence columns)."""
  return None if licenses is None else tuple(licenses)


_PATTERNS = ["**/*.parquet"]


def _lister(dirname: str, task: str):
  def list_files():
    root = storage.join(data_dirs()["stack"], dirname)  # a local path or a gs:// URL
    return files.directory_files(root, _PATTERNS, f"task {task}")()
  return list_files


@functools.lru_cache(maxsize=None)
def _parquet_bytes(stack_root: str) -> dict[str, int]:
  """Bytes of parquet files per language under `stack_root` (listed once per process;
  sizes come with the listing, one request per language on gs://)."""
  return {n: sum(files.list_directory(storage.join(stack_root, d), _PATTERNS,
                                      f"task stack_{n}").values())
          for n, d in LANGUAGES.items()}


@gin.configurable(module="tasks.stack")
def language_rates(mode: str = "bytes", weights=None) -> dict[str, float]:
  """The sampling rate of each language in `stack_code` (summing to 1).

  mode 'bytes' (default): proportional to the parquet bytes of each language directory
    found under the data dir, i.e. the natural mix of the corpus, each document about as
    likely as in one pass over the concatenated data (CodeGen2 publishes no reweighting;
    compressed bytes stand in for token counts, which differ by language only through
    the compression ratio, and are known without reading the data).
  mode 'equal': 1/19 each (the languages with little data repeat many more epochs).
  weights: a {language: weight} mapping (task suffixes, e.g. 'cpp'); overrides `mode`,
    languages it leaves out get 0.
  """
  if weights is not None:
    unknown = sorted(set(weights) - set(LANGUAGES))
    if unknown:
      raise ValueError(f"language_rates.weights: unknown languages {unknown} (known: "
                       f"{', '.join(LANGUAGES)})")
    raw = {n: float(weights.get(n, 0.0)) for n in LANGUAGES}
  elif mode == "equal":
    raw = {n: 1.0 for n in LANGUAGES}
  elif mode == "bytes":
    raw = {n: float(b) for n, b in
           _parquet_bytes(os.fspath(storage.path(data_dirs()["stack"]))).items()}
  else:
    raise ValueError(f"language_rates.mode must be 'bytes' or 'equal', not {mode!r}")
  total = sum(raw.values())
  if total <= 0:
    raise ValueError("language_rates: every language has rate 0")
  return {n: r / total for n, r in raw.items()}


def language_rate(language: str, share: float = 1.0):
  """A seqio mixture rate (a function of the task, read when the mixture is first
  sampled, after gin is parsed): `share` x language_rates()[language]."""
  return lambda task: share * language_rates()[language]


def read_stack_parquet(path: str, task: str):
  """(name, text) of the rows of a Stack parquet file the licence filter keeps."""
  return files.read_parquet(path, "content", _license_filter(task))


@functools.lru_cache(maxsize=None)
def _filter_for(task: str, accepted: tuple[str, ...] | None):
  return None if accepted is None else files.LicenseFilter(accepted, task)


def _license_filter(task: str):
  # One LicenseFilter (one running count) per task and accepted list.
  return _filter_for(task, accepted_licenses())


for _name, _dir in LANGUAGES.items():
  _task = f"stack_{_name}"
  registry.register_task(_task, files.FileSource(
      _lister(_dir, _task), functools.partial(read_stack_parquet, task=_task),
      f"task {_task} (The Stack {_dir} parquet files; set data_dirs.stack or "
      "CODEGEN2_STACK_DIR)"), vocabulary="stack")

registry.register_mixture("stack_code", [(f"stack_{n}", language_rate(n)) for n in LANGUAGES])
