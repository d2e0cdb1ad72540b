"""Where the downloaded corpora live: a gin setting, else an environment variable.

    data_dirs.stack = '/data/the-stack-dedup/data'     or  CODEGEN2_STACK_DIR=...
    data_dirs.pile  = '/data/pile/train'               or  CODEGEN2_PILE_DIR=...

Paths are read when a task's data is first read, so tasks register without the data.
"""

import os

import gin


@gin.configurable
def data_dirs(stack: str | None = None, pile: str | None = None) -> dict[str, str]:
  """{'stack': dir, 'pile': dir}, from gin or the CODEGEN2_*_DIR environment variables."""
  return {"stack": stack or os.environ.get("CODEGEN2_STACK_DIR", "~/data/the-stack-dedup/data"),
          "pile": pile or os.environ.get("CODEGEN2_PILE_DIR", "~/data/pile")}
