"""The one filesystem layer: every path the project reads or writes, local or gs://.

Paths are `etils.epath.Path`s (what Orbax uses too). gs:// goes through fsspec/gcsfs, not
TensorFlow's GCS filesystem: gcsfs follows the google-cloud-storage conventions (default
credentials on a TPU VM, `STORAGE_EMULATOR_HOST` for an emulator), while TensorFlow's
client cannot be pointed at an emulator, so nothing could test it. Orbax writes its
arrays through tensorstore, which reads `TENSORSTORE_GCS_HTTP_URL` and
`GOOGLE_AUTH_TOKEN_FOR_TESTING`; with an emulator they are set from `STORAGE_EMULATOR_HOST`
unless the user set them.

`configure()` runs when the package is imported, before any gs:// access.
"""

from __future__ import annotations

import logging
import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]

REMOTE_SCHEMES = ("gs://",)


class _QuietGcsfs(logging.Filter):
  """Drops gcsfs's notes that say nothing about the user's run: the zonal-bucket probe
  that needs extra credentials (gcsfs falls back to the regular API), and a server
  without the moveTo API (gcsfs falls back to copy + delete; emulators lack moveTo)."""

  _NOISE = ("Could not determine bucket type", "moveTo", "out of retries on exception: , 501")

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not any(n in msg for n in self._NOISE)


def configure() -> None:
  """Routes gs:// through gcsfs (EPATH_USE_TF=false unless set) and points tensorstore
  at `STORAGE_EMULATOR_HOST` when that is set. Idempotent."""
  os.environ.setdefault("EPATH_USE_TF", "false")
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if emulator:
    url = emulator if "://" in emulator else f"http://{emulator}"
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  logger = logging.getLogger("gcsfs")
  if not any(isinstance(f, _QuietGcsfs) for f in logger.filters):
    logger.addFilter(_QuietGcsfs())


def is_remote(p: PathLike) -> bool:
  """Whether `p` is a URL (gs://...) rather than a local path."""
  return str(p).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path: gs:// URLs as they are; local paths made absolute (with ~
  expanded), so a later chdir does not move them."""
  if isinstance(p, epath.Path) and is_remote(p):
    return p
  s = os.fspath(p)
  if is_remote(s):
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def join(p: PathLike, *parts: str) -> str:
  """`p`/parts as a string (a URL stays a URL; never `gs:/` with one slash)."""
  return os.fspath(path(p).joinpath(*parts))


def check_writable_dir(p: PathLike, what: str = "directory") -> epath.Path:
  """Creates directory `p` (local or gs://) and proves it writable by writing and
  deleting a probe file; OSError naming `what` and `p` if it is a file or cannot be
  written. Returns the path."""
  d = path(p)
  try:
    if d.exists() and not d.is_dir():
      raise OSError(f"{what} {d} is a file, not a directory")
    d.mkdir(parents=True, exist_ok=True)
    probe = d / f".write_test.{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    if str(e).startswith(f"{what} "):
      raise
    raise OSError(f"{what} {d} is not writable: {e.strerror or e}") from e
  except Exception as e:  # gcsfs/google-auth errors (credentials, bucket missing, HTTP)
    raise OSError(f"{what} {d} is not writable: {type(e).__name__}: {e}") from e
  return d
