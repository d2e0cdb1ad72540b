"""The Stack (deduplicated, v1.1 layout): one task per language of the paper's 19.

Files: `<stack dir>/<language>/*.parquet` with a `content` column (the layout of
bigcode/the-stack-dedup's `data/` folder). Tasks `stack_<name>`; mixture `stack_code`
over all 19 at equal rates.
"""

import os

from codegen2_jax.data import files, registry
from tasks.paths import data_dirs

# task suffix -> directory name in The Stack
LANGUAGES = {
    "c": "c", "cpp": "c++", "c_sharp": "c-sharp", "dart": "dart", "go": "go",
    "java": "java", "javascript": "javascript", "kotlin": "kotlin", "lua": "lua",
    "php": "php", "python": "python", "r": "r", "ruby": "ruby", "rust": "rust",
    "scala": "scala", "shell": "shell", "sql": "sql", "swift": "swift",
    "typescript": "typescript",
}


def _lister(dirname: str, task: str):
  def list_files():
    root = os.path.join(os.path.expanduser(data_dirs()["stack"]), dirname)
    return files.directory_files(root, ["*.parquet", "**/*.parquet"],
                                 f"task {task}")()
  return list_files


for _name, _dir in LANGUAGES.items():
  _task = f"stack_{_name}"
  registry.register_task(_task, files.FileSource(
      _lister(_dir, _task), lambda p: files.read_parquet(p, "content"),
      f"task {_task} (The Stack {_dir} parquet files; set data_dirs.stack or "
      "CODEGEN2_STACK_DIR)"))

registry.register_mixture("stack_code", [(f"stack_{n}", 1.0) for n in LANGUAGES])
