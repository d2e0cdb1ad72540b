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
import stat
import uuid
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
  # gcsfs caches directory listings forever by default, so objects written by another
  # process (a checkpoint's arrays via tensorstore, another host, a resumed run) would
  # stay invisible to exists/is_dir/iterdir here. Always ask the server.
  import fsspec.config
  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)
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
    # Unique per process and host: the hosts of a pod probe the same gs:// folder, and
    # their processes may share a pid.
    probe = d / f".write_test.{os.getpid()}.{uuid.uuid4().hex[:12]}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    if str(e).startswith(f"{what} "):
      raise
    raise OSError(f"{what} {d} is not writable: {e.strerror or e}") from e
  except Exception as e:  # gcsfs/google-auth errors (credentials, bucket missing, HTTP)
    raise OSError(f"{what} {d} is not writable: {type(e).__name__}: {e}") from e
  return d


def list_tree(p: PathLike) -> dict[str, int]:
  """Every file under directory `p` (recursively) as {path: size in bytes}, in walk order
  (a folder's files, then its subfolders, each sorted). Local: directory symlinks are not
  followed, file symlinks are (broken ones left out). gs://: one paged listing of the
  prefix (not a request per file or folder); URLs keep their gs://. Empty when `p` does
  not exist or is not a directory (a missing bucket too)."""
  top = path(p)
  if not is_remote(top):
    found = {}
    for d, dirs, names in os.walk(os.fspath(top), followlinks=False):
      dirs.sort()
      for name in sorted(names):
        f = os.path.join(d, name)
        try:
          st = os.stat(f)  # through a file symlink
        except OSError:  # a broken link
          continue
        if stat.S_ISREG(st.st_mode):  # not a link to a directory, a socket, ...
          found[f] = st.st_size
    return found
  url = os.fspath(top).rstrip("/")
  fs = epath.backend.fsspec_backend.fs(url)
  try:
    infos = fs.find(url, detail=True)
  except FileNotFoundError:  # no such bucket
    return {}
  prefix = url[len("gs://"):] + "/"
  # Only objects inside the folder (find also answers for a file named `p`); folder
  # placeholder objects ("dir/") are not files.
  names = [n for n, i in infos.items()
           if n.startswith(prefix) and i.get("type") == "file" and not n.endswith("/")]
  # Walk order, as locally: a folder's own files before its subfolders' (folders compare
  # as lists of names, and a folder's list is a prefix of its subfolders').
  names.sort(key=lambda n: (n.split("/")[:-1], n))
  return {"gs://" + n: int(infos[n]["size"]) for n in names}


def open_read(p: PathLike, block_size: int = 8 << 20):
  """`p` opened for reading (binary), for streaming through a file: gs:// objects are
  read with a plain readahead cache, one ranged GET per `block_size` bytes read, holding
  about one block. (gcsfs's default, an adaptive prefetcher, downloads up to 256 MB ahead
  of the reader per open file in the background: with several files read at once, that
  is GBs of memory, and for parquet, column chunks the reader skips.)"""
  f = path(p)
  if not is_remote(f):
    return f.open("rb")
  url = os.fspath(f)
  return epath.backend.fsspec_backend.fs(url).open(url, "rb", block_size=block_size,
                                                   cache_type="readahead")
