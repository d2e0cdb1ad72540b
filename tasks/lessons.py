"""Tasks for the paper's lesson 5 (multi-epoch): smaller train sets, same validation.

    stdlib_code_subset    one stdlib train document in SUBSET_EVERY (CPU-scale lessons)
    stack_code_subset     The Stack's 19 languages, one parquet file in STACK_SUBSET_EVERY
                          per language for train (1B-scale lessons)

Validation is the full held-out split of the parent corpus, so both arms of the lesson
are measured on the same documents. At equal steps, the subset is seen for that many
times more epochs (the trainer reports epoch/<task>).
"""

import functools

from codegen2_jax.data import files, registry, sources
from tasks.stack import LANGUAGES, _lister, language_rate, read_stack_parquet

SUBSET_EVERY = 40  # ~150k train tokens: about 4 passes in the CPU lessons
STACK_SUBSET_EVERY = 4

registry.register_task("stdlib_code_subset", sources.stdlib_code_source(train_every=SUBSET_EVERY))

for _name, _dir in LANGUAGES.items():
  _task = f"stack_{_name}_subset"
  registry.register_task(_task, files.FileSource(
      _lister(_dir, _task), functools.partial(read_stack_parquet, task=_task),
      f"task {_task} (The Stack {_dir} parquet files; set data_dirs.stack or "
      "CODEGEN2_STACK_DIR)", train_file_every=STACK_SUBSET_EVERY), vocabulary="stack")

registry.register_mixture("stack_code_subset",
                          [(f"stack_{n}_subset", language_rate(n)) for n in LANGUAGES])
