"""TensorFlow as this project uses it: a CPU-only, quiet runtime for the data pipeline.

TensorFlow only feeds data here; jax owns the accelerators. On import TensorFlow's C++
side logs its CUDA probing ("Could not find cuda drivers", "failed call to cuInit") to
file descriptor 2 before its log level applies, so `setup` imports it and hides the GPUs
from it with fd 2 captured, then replays every captured line except those probes. It also
turns AutoGraph's conversion warnings off (our tf.data functions need no conversion).

SentencePiece: tensorflow-text's SentencePiece op (what seqio tokenizes with) carries its
own copy of SentencePiece, whose `LOG(INFO)` lines ("normalizer.cc(51) LOG(INFO)
precompiled_charsmap is empty. use identity normalization.", once per kernel, from any
tf.data thread) go straight to std::cerr. That copy's minimum log level is a private
variable of the op library with no setter exported, so `setup` finds it through the
library's ELF symbol table and sets it to WARNING: INFO lines go, warnings and errors
stay. (The `sentencepiece` Python module logs nothing when it loads our models, and its
trainer is called with minloglevel=2 in data/vocab.py.)
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import re
import struct
import sys
import tempfile

# The lines TensorFlow prints while it looks for CUDA on a machine without it, and the
# absl preamble that precedes them. Anything else captured is printed back.
_PROBE_LINES = re.compile(
    r"cudart_stub\.cc|cuda_platform\.cc|cuda_driver\.cc|cuda_executor\.cc|cuInit|"
    r"cuda drivers|All log messages before absl::InitializeLog|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|oneDNN custom operations|cpu_feature_guard|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"This TensorFlow binary is optimized to use available CPU instructions")

_DONE = False


@contextlib.contextmanager
def _filtered_stderr():
  """Captures fd 2 (C++ logging included) and replays the lines that are not CUDA probes."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real fd 2 (embedded interpreters): filter nothing
    yield
    return
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      for line in tmp.read().decode("utf-8", "replace").splitlines():
        if line.strip() and not _PROBE_LINES.search(line):
          print(line, file=sys.stderr)


def setup() -> None:
  """Imports TensorFlow CPU-only and quiet (idempotent; call before any TF op)."""
  global _DONE
  if _DONE:
    return
  _DONE = True
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _filtered_stderr():
    import tensorflow as tf
    try:
      # Enumerates the physical devices (the cuInit probe) and keeps TF off any GPU.
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's runtime already started (someone ran an op first)
      pass
    try:
      import tensorflow_text  # noqa: F401  (seqio imports it too; loads the op library)
    except ImportError:
      pass
  tf.autograph.set_verbosity(0)
  try:
    if not set_sentencepiece_op_log_level(SPM_WARNING):
      logging.debug("tensorflow-text's SentencePiece op library not found; its INFO lines "
                    "stay on")
  except (OSError, ValueError, struct.error) as e:  # an unexpected library layout
    logging.debug("could not quiet tensorflow-text's SentencePiece logging: %s", e)


# SentencePiece's `static int g_minloglevel`, in the anonymous namespace of its logging
# code: `_ZN13sentencepiece12_GLOBAL__N_113g_minloglevelE`. Its LOG(severity) prints when
# severity >= the level (INFO 0, WARNING 1, ERROR 2, FATAL 3; FATAL always prints).
_SPM_LEVEL = re.compile(rb"^_ZN13sentencepiece(7logging)?12_GLOBAL__N_113g_minloglevelE$")
SPM_INFO, SPM_WARNING = 0, 1


def _loaded_library(suffix: str) -> str | None:
  """The path of the mapped file of this process whose name ends with `suffix`."""
  with open("/proc/self/maps") as maps:
    for line in maps:
      path = line.split(None, 5)[-1].strip()
      if path.endswith(suffix):
        return path
  return None


def _elf_symbols(path: str, section_type: int):
  """(name, value, size, info) of the symbols in the sections of `section_type` (2 =
  .symtab, 11 = .dynsym) of a little-endian ELF64 file, read without loading it."""
  with open(path, "rb") as f:
    head = f.read(64)
    if head[:6] != b"\x7fELF\x02\x01":
      raise ValueError(f"{path} is not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", head, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
      if kind != section_type or not entsize:
        continue
      f.seek(offset)
      syms = f.read(size)
      f.seek(sections[link][4])
      names = f.read(sections[link][5])
      for i in range(0, size, entsize):
        name, info, _, shndx, value, sym_size = struct.unpack_from("<IBBHQQ", syms, i)
        if shndx and value:  # defined here
          yield names[name:names.index(b"\0", name)], value, sym_size, info


def set_sentencepiece_op_log_level(level: int) -> bool:
  """Sets the minimum log level of tensorflow-text's SentencePiece copy (SPM_WARNING drops
  INFO lines only; see the module docstring). Returns False if that op library is not
  loaded; raises ValueError if it does not look as expected (nothing is written then)."""
  if level not in range(4):
    raise ValueError(f"a SentencePiece log level is 0..3, got {level}")
  path = _loaded_library("/_sentencepiece_tokenizer.so")
  if path is None:
    return False
  offset = next((v for n, v, size, _ in _elf_symbols(path, 2)
                 if size == 4 and _SPM_LEVEL.match(n)), None)
  if offset is None:
    raise ValueError(f"no SentencePiece log level symbol in {path}")
  # The load address: where the loader put three exported functions, less their addresses
  # in the file's symbol table (all three must agree, or nothing is written).
  lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
  funcs = ((n, v) for n, v, _, info in _elf_symbols(path, 11) if info == 0x12)  # GLOBAL FUNC
  bases = {ctypes.cast(lib[n.decode()], ctypes.c_void_p).value - v
           for n, v in itertools.islice(funcs, 3)}
  if len(bases) != 1:
    raise ValueError(f"no consistent load address for {path}")
  cell = ctypes.c_int.from_address(bases.pop() + offset)
  if cell.value not in range(4):  # not a log level: the wrong address, leave it alone
    raise ValueError(f"unexpected SentencePiece log level {cell.value} in {path}")
  cell.value = level
  return True
