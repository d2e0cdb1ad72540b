"""Tokens per UTF-8 byte of the CodeGen2 tokenizer vs the stdlib SentencePiece on held-out
code: the stdlib's validation split (the SentencePiece never saw it) and other languages
found on this machine (C headers, JavaScript, shell, Go), up to ~1 MB per set.

    .venv/bin/python benchmarks/tokens_per_byte.py
"""

import glob
import os
import random
import sys

from codegen2_jax.data import registry, sources
from codegen2_jax.data import vocab as V

SITE = f"{sys.prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"


def read_some(patterns, limit_bytes=1_000_000, seed=0) -> list[str]:
  """UTF-8 files matching `patterns`, in a seeded order, until `limit_bytes`."""
  paths = sorted({p for pat in patterns for p in glob.glob(pat, recursive=True)
                  if os.path.isfile(p)})
  random.Random(seed).shuffle(paths)
  out, size = [], 0
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except (UnicodeDecodeError, OSError):
      continue
    out.append(text)
    size += len(text.encode())
    if size >= limit_bytes:
      break
  return out


SETS = {
    "Python (stdlib validation split)":
        lambda: [t for _, t in sources.split_docs(sources.stdlib_code(), "validation")],
    "C headers (/usr/include)": lambda: read_some(["/usr/include/*.h", "/usr/include/*/*.h"]),
    "JavaScript (site-packages)": lambda: read_some([f"{SITE}/**/*.js"]),
    "shell (site-packages, /usr/share)": lambda: read_some([f"{SITE}/**/*.sh",
                                                            "/usr/share/**/*.sh"]),
    "Go (/usr/share/doc)": lambda: read_some(["/usr/share/doc/**/*.go"]),
}


def main() -> None:
  spm, cg2 = registry.default_vocabulary(), V.codegen2_tokenizer()
  print("| held-out code | files | bytes | CodeGen2 tokenizer | stdlib SentencePiece |")
  print("|---|---|---|---|---|")
  for name, make in SETS.items():
    texts = make()
    if not texts:
      print(f"| {name} | 0 | - | - | - |")
      continue
    size = sum(len(t.encode()) for t in texts)
    a = sum(len(cg2.encode(t)) for t in texts) / size
    b = sum(len(spm.encode(t)) for t in texts) / size
    print(f"| {name} | {len(texts)} | {size:,} | {a:.3f} | {b:.3f} |", flush=True)


if __name__ == "__main__":
  main()
