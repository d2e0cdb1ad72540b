"""Run files for the paper's sizes, hardware presets, and the launch scripts (their dry runs,
and each run against fakes of gcloud, srun and the training on this machine)."""

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from codegen2_jax import gin_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("size,layers", [("1b", 16), ("3_7b", 16), ("7b", 32), ("16b", 34)])
@pytest.mark.parametrize("hardware", ["tpu", "gpu", "cpu", "dp", "fsdp", "fsdp_tp"])
def test_pretrain_run_files_parse_with_every_hardware_preset(size, layers, hardware):
  import gin
  import tasks  # noqa: F401
  from codegen2_jax import partitioning, trainer  # noqa: F401
  from codegen2_jax.models.codegen import ModelConfig
  gin_config.parse([f"gin/runs/pretrain_{size}.gin", f"gin/hardware/{hardware}.gin"], [])
  for name in gin_config.STANDARD_MACROS:
    gin_config.macro(name)
  assert gin_config.macro("SEQ_LEN") == 2048
  assert gin_config.macro("MIXTURE_OR_TASK_NAME") == "stack_code"  # The Stack alone (model card)
  cfg = ModelConfig()
  assert cfg.n_layers == layers and cfg.max_len == 2048
  assert cfg.dtype == ("float32" if hardware == "cpu" else "bfloat16")
  fsdp = gin.query_parameter("make_mesh.fsdp")
  assert fsdp == (-1 if hardware in ("tpu", "gpu", "fsdp", "fsdp_tp") else 1)
  gin.clear_config()


def sh(*args, cwd=REPO, env=None, check=True):
  return subprocess.run(["bash", *args], cwd=cwd, env=env, capture_output=True, text=True,
                        check=check, timeout=120).stdout


def commands(out):
  """The commands a dry run printed (comment lines dropped), each split like a shell would."""
  return [shlex.split(line) for line in out.strip().splitlines() if not line.startswith("#")]


def remote(cmd):
  """The script an `ssh --command=...` command runs on the workers."""
  return next(a for a in cmd if a.startswith("--command=")).split("=", 1)[1]


POD = f"{REPO}/launch/tpu_pod.sh"
TPU = ["--tpu=cg2", "--zone=us-central2-b"]


def test_tpu_pod_dry_run_prints_every_step_and_runs_nothing(tmp_path):
  env = {**os.environ, "TMPDIR": str(tmp_path)}
  out = sh(POD, *TPU, "--accelerator=v4-64", "--create", "--dry_run", "--env=FOO=a b", "--",
           "--gin_file=gin/runs/pretrain_1b.gin", "--model_dir=gs://b/r",
           "--gin.X='a b'", env=env)
  create, tar, scp, cleanup, unpack, install, start = commands(out)
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cg2"]
  assert "--accelerator-type=v4-64" in create
  assert tar[:2] == ["tar", "-czf"] and tar[2] == scp[5] and tar[2].startswith(str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing was packed
  assert tar[tar.index("-C") + 1:] == [str(REPO), "setup.py", "requirements-lock.txt",
                                       "README.md", "codegen2_jax", "tasks", "gin", "launch"]
  assert scp[4] == "scp" and scp[6] == "cg2:codegen2-jax-ship.tar.gz"
  for cmd in (scp, cleanup, unpack, install, start):
    assert "--worker=all" in cmd and "--zone=us-central2-b" in cmd
  assert "kill -TERM -- -\"$pg\"" in remote(cleanup) and "lsof -t /dev/accel*" in remote(cleanup)
  assert "sudo rm -f /tmp/libtpu_lockfile" in remote(cleanup)
  assert "tar -xzf ~/codegen2-jax-ship.tar.gz" in remote(unpack)
  assert "PY=python3.11;" in remote(install)
  assert "pip install -q -c requirements-lock.txt -e \".[tpu]\"" in remote(install)
  assert "setsid nohup bash -c" in remote(start) and "< /dev/null &" in remote(start)
  assert "env PYTHONUNBUFFERED=1 FOO=a\\ b $D/venv/bin/python" in remote(start)
  assert ("codegen2_jax.train --gin_file=gin/runs/pretrain_1b.gin --model_dir=gs://b/r "
          "--gin.X=\\'a\\ b\\' > $L/worker-$W.log") in remote(start)
  assert "launch/tpu_pod.sh logs --tpu=cg2 --zone=us-central2-b" in out


def test_tpu_pod_ships_your_gin_files_their_includes_and_modules(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "my_pkg").mkdir()
  (tmp_path / "data").mkdir()
  (tmp_path / "my.gin").write_text("include 'sub/base.gin'\nimport my_tasks\n"
                                   "import my_pkg.things\nimport seqio\n")
  (tmp_path / "sub/base.gin").write_text("include 'gin/runs/pretrain_1b.gin'\n"
                                         "include \"sub/more.gin\"\n")
  (tmp_path / "sub/more.gin").write_text("include 'sub/base.gin'\n")  # a cycle
  (tmp_path / "my_tasks.py").write_text("")
  (tmp_path / "my_pkg/__init__.py").write_text("")
  (tmp_path / "data/notes.txt").write_text("")
  (tmp_path / "unused.gin").write_text("")
  out = sh(POD, *TPU, "--dry_run", "--no_install", "--ship=data/,./my_tasks.py", "--",
           "--gin_file=gin/hardware/tpu.gin", "--gin_file", "my.gin", "--model_dir=gs://b/r",
           cwd=tmp_path)
  tar = commands(out)[0]
  assert tar[-8:] == ["-C", str(tmp_path), "data", "my_tasks.py", "my.gin", "sub/base.gin",
                      "sub/more.gin", "my_pkg"]
  assert not any("pip install" in line for line in out.splitlines())  # --no_install
  for bad, message in [("--ship=/etc/hosts", "give paths relative to the current directory"),
                       ("--ship=../x", "paths must stay inside the current directory"),
                       ("--ship=nope.py", "--ship nope.py: no such file or folder")]:
    r = subprocess.run(["bash", POD, *TPU, "--dry_run", bad, "--", "--gin_file=my.gin"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
  r = subprocess.run(["bash", POD, *TPU, "--dry_run", "--", "--gin_file=missing.gin"],
                     cwd=tmp_path, capture_output=True, text=True)
  assert r.returncode == 2 and "gin file missing.gin not found" in r.stderr


def test_tpu_pod_logs_and_stop_dry_run():
  [logs] = commands(sh(POD, "logs", *TPU, "--project=p", "--worker=3", "--dry_run"))
  assert logs[4:6] == ["ssh", "cg2"] and "--worker=3" in logs and "--project=p" in logs
  assert "tail -n 100 -F $L/worker-*.log" in remote(logs)
  [stop] = commands(sh(POD, "stop", *TPU, "--grace=7", "--dry_run"))
  assert "--worker=all" in stop and "SIGKILL after 7 s" in remote(stop)
  assert "$(seq 35)" in remote(stop)
  assert "rm -f /tmp/libtpu_lockfile" in remote(stop)


FAKES = {
  # gcloud: scp copies into $HOME, ssh runs the command here: this machine is the one worker.
  "gcloud": """echo "gcloud $*" >> "$FAKE_LOG"
case "$4" in
  scp) cp "$5" "$HOME/${6#*:}" ;;
  ssh) for a in "$@"; do [[ "$a" == --command=* ]] && exec bash -c "${a#--command=}"; done ;;
esac""",
  "sudo": 'if [[ $1 == rm ]]; then echo "sudo $*" >> "$FAKE_LOG"; else exec "$@"; fi',
  "lsof": 'cat "$HOME/tpu_holders" 2>/dev/null; rm -f "$HOME/tpu_holders"',
  "curl": "echo 0",  # the metadata server: worker number 0
  "python3.11": """if [[ $1 == -m && $2 == venv ]]; then
  mkdir -p "$3/bin" && cp "$FAKES/venv_python" "$3/bin/python"; fi""",
  "venv_python": """if [[ $2 == pip ]]; then echo "pip ${*:3} in $PWD" >> "$HOME/pip.log"; exit; fi
echo "train $* in $PWD"
[[ " $* " == *" --model_dir=fail "* ]] && { echo "bad model_dir"; exit 3; }
trap 'echo "SIGTERM: saving"; exit 0' TERM
while :; do sleep 0.1; done""",
}


def test_tpu_pod_start_logs_stop_on_a_fake_worker(tmp_path):
  """The whole launcher against this machine as its one worker (fake gcloud, sudo, lsof)."""
  fakes, home, exp = tmp_path / "fakes", tmp_path / "home", tmp_path / "exp"
  for d in (fakes, home, exp):
    d.mkdir()
  for name, body in FAKES.items():
    (fakes / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
    (fakes / name).chmod(0o755)
  (exp / "my.gin").write_text("import my_tasks\n")
  (exp / "my_tasks.py").write_text("")
  env = {**os.environ, "HOME": str(home), "PATH": f"{fakes}:{os.environ['PATH']}",
         "FAKES": str(fakes), "FAKE_LOG": str(tmp_path / "gcloud.log"), "TMPDIR": str(tmp_path)}
  pod = lambda *a, check=True: subprocess.run(  # noqa: E731
      ["bash", POD, *a], cwd=exp, env=env, capture_output=True, text=True, timeout=60,
      check=check)
  d = home / "codegen2-jax"
  stale = subprocess.Popen(["sleep", "300"])  # an earlier run still holding the TPU
  (home / "tpu_holders").write_text(f"{stale.pid}\n")
  try:
    # Returns although the run goes on: it is detached from the (fake) ssh session.
    r = pod(*TPU, "--grace=10", "--", "--gin_file=my.gin", "--model_dir=gs://b/r")
    assert stale.wait(timeout=10) == -signal.SIGKILL
    assert f"killing stale process {stale.pid}, which holds the TPU" in r.stdout
    assert "sudo rm -f /tmp/libtpu_lockfile" in (tmp_path / "gcloud.log").read_text()
    assert (d / "code/my.gin").is_file() and (d / "code/my_tasks.py").is_file()
    assert (d / "code/codegen2_jax/train.py").is_file()
    assert not (home / "codegen2-jax-ship.tar.gz").exists()
    assert (home / "pip.log").read_text() == (
        "pip install -q --upgrade pip in " + str(exp) + "\n"
        f"pip install -q -c requirements-lock.txt -e .[tpu] in {d / 'code'}\n")
    pid = int((d / "run.pid").read_text())
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid  # its own session
    log = (d / "logs/latest").resolve() / "worker-0.log"  # this run's log
    assert f"train -m codegen2_jax.train --gin_file=my.gin --model_dir=gs://b/r in {d / 'code'}" \
        in log.read_text()
    assert "running in process group" in r.stdout and "logs --tpu=cg2" in r.stdout

    # A second start: the install is skipped, the first run is stopped with SIGTERM.
    r = pod("start", *TPU, "--", "--gin_file=my.gin", "--model_dir=gs://b/r2")
    assert "is up to date" in r.stdout and len((home / "pip.log").read_text().splitlines()) == 2
    assert "SIGTERM: saving\n[codegen2-jax] training exited with status 0" in log.read_text()
    assert int((d / "run.pid").read_text()) != pid

    # logs follows the newest run's log (until interrupted).
    followed = tmp_path / "logs.out"
    with open(followed, "w") as f:
      p = subprocess.Popen(["bash", POD, "logs", *TPU], cwd=exp, env=env, stdout=f,
                           stderr=subprocess.STDOUT, start_new_session=True)
      deadline = time.time() + 15
      while "--model_dir=gs://b/r2" not in followed.read_text() and time.time() < deadline:
        time.sleep(0.1)
      still_following = p.poll() is None
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
    assert "--model_dir=gs://b/r2" in followed.read_text() and still_following

    r = pod("stop", *TPU)
    assert not (d / "run.pid").exists()
    assert "training exited with status 0" in (d / "logs/latest/worker-0.log").read_text()

    # A run that dies at once makes the launcher fail, showing the end of its log.
    r = pod(*TPU, "--no_install", "--", "--gin_file=my.gin", "--model_dir=fail", check=False)
    assert r.returncode != 0 and "bad model_dir" in r.stderr
  finally:
    stale.kill()
    if (d / "run.pid").exists():
      os.killpg(int((d / "run.pid").read_text()), signal.SIGKILL)


def test_gpu_scripts_dry_run():
  out = sh("launch/gpu_node.sh", "--gpus=0,1", "--dry_run", "--", "--gin_file=a.gin")
  assert "CUDA_VISIBLE_DEVICES=0,1" in out and "codegen2_jax.train --gin_file=a.gin" in out
  out = sh("launch/gpu_slurm.sh", "--nodes=4", "--partition=gpu", "--dry_run", "--",
           "--gin_file=gin/runs/pretrain_7b.gin", "--model_dir=/ck")
  assert "#SBATCH --nodes=4" in out and "#SBATCH --partition=gpu" in out
  assert "JAX_COORDINATOR_ADDRESS=" in out and "JAX_PROCESS_ID=$SLURM_PROCID" in out
  assert "--gin_file=gin/runs/pretrain_7b.gin" in out


def test_gpu_slurm_job_runs_here_with_the_exact_arguments(tmp_path):
  """The batch script, run with a fake srun/scontrol: python gets the arguments verbatim
  (quotes of gin string overrides included) in the directory the job was launched from."""
  script = sh(f"{REPO}/launch/gpu_slurm.sh", "--nodes=2", "--dry_run", "--",
              "--gin_file=my.gin", "--gin.tasks.paths.data_dirs.stack='/data/a b'", cwd=tmp_path)
  job = script.split("\nsbatch ")[0]
  fakes = tmp_path / "fakes"
  fakes.mkdir()
  for name, body in {"srun": 'SLURM_PROCID=1 "$@"', "scontrol": "echo node7",
                     "python3": 'printf "%s\\n" "$@" "$JAX_PROCESS_ID" '
                                '"$JAX_COORDINATOR_ADDRESS" "$PWD"'}.items():
    (fakes / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
    (fakes / name).chmod(0o755)
  env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n",
         "SLURM_NTASKS": "2"}
  out = subprocess.run(["bash", "-c", job], cwd=REPO, env=env, capture_output=True, text=True,
                       check=True).stdout
  assert out.splitlines() == ["-m", "codegen2_jax.train", "--gin_file=my.gin",
                              "--gin.tasks.paths.data_dirs.stack='/data/a b'", "1",
                              "node7:12355", str(tmp_path)]


def test_launch_scripts_refuse_missing_arguments():
  r = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry_run", "--", "x"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "--tpu and --zone are required" in r.stderr
