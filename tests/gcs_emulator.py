"""gcp-storage-emulator with the generation semantics of real GCS that tensorstore needs.

`start(bucket)` runs it in a subprocess (tests/conftest.py, benchmarks/checkpoint_io.py);
by hand: `python tests/gcs_emulator.py start --port=...`, the package's own arguments. The emulator (2026.7.19) stores a generation per object but does not send it
on media downloads (`x-goog-generation`) and ignores the `ifGenerationMatch` /
`ifGenerationNotMatch` preconditions. Real GCS does both, and tensorstore's OCDBT
manifest updates (what Orbax checkpoints write) depend on them: without them a second
save into a gs:// checkpoint folder fails with "Malformed StorageGeneration". This file
adds exactly those two behaviours to the emulator's own handlers, as the GCS JSON API
documents them; everything else is the emulator's.
"""

import functools
import os
import socket
import subprocess
import sys
import time
import urllib.request
from http import HTTPStatus


def start(bucket: str) -> tuple[subprocess.Popen, str]:
  """This emulator in memory on a free local port, with `bucket` created; returns the
  process and its URL once it answers (RuntimeError if it does not within 60 s)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "start", "--host=127.0.0.1",
       f"--port={port}", "--in-memory", f"--default-bucket={bucket}"],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2).read()
      return proc, url
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        raise RuntimeError("gcp-storage-emulator did not start")
      time.sleep(0.2)


def _patch() -> None:
  """Adds the two GCS behaviours to the emulator's handlers (before its server module,
  whose route table takes the functions, is imported)."""
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  def _current(storage, bucket: str, name: str):
    try:
      return storage.get_file_obj(bucket, name)
    except NotFound:
      return None

  def _precondition(request, obj) -> HTTPStatus | None:
    """412 / 304 when a generation precondition of the request does not hold, else None.
    (GCS: ifGenerationMatch=0 means "only if absent".)"""
    query = request.query
    have = obj["generation"] if obj else "0"
    if "ifGenerationMatch" in query and query["ifGenerationMatch"][0] != have:
      return HTTPStatus.PRECONDITION_FAILED
    if ("ifGenerationNotMatch" in query and obj is not None
        and query["ifGenerationNotMatch"][0] == have):
      return HTTPStatus.NOT_MODIFIED
    return None

  def _reads(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
      obj = _current(storage, request.params["bucket_name"], request.params["object_id"])
      status = _precondition(request, obj) if obj is not None else None
      if status is not None:
        response.status = status
        return None
      result = handler(request, response, storage, *args, **kwargs)
      if obj is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj.get("metageneration", "1")
      return result
    return wrapped

  def _uploads(handler):
    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
      kind = (request.query.get("uploadType") or [""])[0]
      name = None
      if kind == "media":
        name = request.query.get("name", [None])[0]
      elif kind == "multipart":
        name = request.data["meta"].get("name")
      if name is not None:
        obj = _current(storage, request.params["bucket_name"], name)
        status = _precondition(request, obj)
        if status is not None:
          response.status = status
          return None
      return handler(request, response, storage, *args, **kwargs)
    return wrapped

  # The server's route table takes these functions when it is imported: patch first.
  objects.get = _reads(objects.get)
  objects.download = _reads(objects.download)
  objects.insert = _uploads(objects.insert)


if __name__ == "__main__":
  _patch()
  from gcp_storage_emulator.__main__ import main
  main(sys.argv[1:])

