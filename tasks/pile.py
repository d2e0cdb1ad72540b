"""The Pile: .jsonl / .jsonl.zst / .jsonl.gz files of {"text": ..., "meta": {...}}.

Task `pile` (natural language, plus whatever code the Pile holds); mixture
`stack_code_pile` mixes the 19 Stack languages (at `stack.language_rates`, scaled to half)
with it 50/50: the code + natural language arm of the paper's lesson 4. The final recipe
(gin/runs/pretrain_*.gin) trains on `stack_code` alone, as the CodeGen2 model card says.
"""

from codegen2_jax.data import files, registry
from tasks.paths import data_dirs
from tasks.stack import LANGUAGES, language_rate


def _list_pile_files():
  root = data_dirs()["pile"]  # a local path (~ expanded) or a gs:// URL
  return files.directory_files(root, [f"**/*{s}" for s in files.JSONL_SUFFIXES],
                               "task pile")()


registry.register_task("pile", files.FileSource(
    _list_pile_files, files.read_jsonl,
    "task pile (.jsonl/.jsonl.zst/.jsonl.gz files; set data_dirs.pile or "
    "CODEGEN2_PILE_DIR)"),
    vocabulary="pile")

registry.register_mixture(
    "stack_code_pile",
    [(f"stack_{n}", language_rate(n, share=0.5)) for n in LANGUAGES] + [("pile", 0.5)])
