"""The Pile: .jsonl / .jsonl.zst files of {"text": ..., "meta": {"pile_set_name": ...}}.

Task `pile` (natural language, plus whatever code the Pile holds); mixture
`stack_code_pile` mixes the 19 Stack languages with it 50/50 (the paper's lesson 4).
"""

import os

from codegen2_jax.data import files, registry
from tasks.paths import data_dirs
from tasks.stack import LANGUAGES


def _list_pile_files():
  root = os.path.expanduser(data_dirs()["pile"])
  return files.directory_files(root, ["*.jsonl", "*.jsonl.zst", "**/*.jsonl",
                                      "**/*.jsonl.zst"], "task pile")()


registry.register_task("pile", files.FileSource(
    _list_pile_files, files.read_jsonl,
    "task pile (.jsonl/.jsonl.zst files; set data_dirs.pile or CODEGEN2_PILE_DIR)"))

registry.register_mixture(
    "stack_code_pile",
    [(f"stack_{n}", 0.5 / len(LANGUAGES)) for n in LANGUAGES] + [("pile", 0.5)])
