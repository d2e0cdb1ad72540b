"""Run files for the paper's sizes, hardware presets, and the launch scripts' dry runs."""

import subprocess
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
  assert gin_config.macro("MIXTURE_OR_TASK_NAME") == "stack_code_pile"
  cfg = ModelConfig()
  assert cfg.n_layers == layers and cfg.max_len == 2048
  assert cfg.dtype == ("float32" if hardware == "cpu" else "bfloat16")
  fsdp = gin.query_parameter("make_mesh.fsdp")
  assert fsdp == (-1 if hardware in ("tpu", "gpu", "fsdp", "fsdp_tp") else 1)
  gin.clear_config()


def sh(*args):
  return subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, check=True
                        ).stdout


def test_tpu_pod_dry_run():
  out = sh("launch/tpu_pod.sh", "--tpu=cg2", "--zone=us-central2-b", "--accelerator=v4-64",
           "--create", "--dry_run", "--", "--gin_file=gin/runs/pretrain_1b.gin",
           "--model_dir=gs://b/r", "--gin.TRAIN_STEPS=10")
  lines = out.strip().splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create cg2")
  assert "--accelerator-type=v4-64" in lines[0]
  assert all("--worker=all" in line for line in lines[1:])
  assert "pip install" in lines[2] and "codegen2_jax.train" in lines[3]
  assert "--gin.TRAIN_STEPS=10" in lines[3]


def test_gpu_scripts_dry_run():
  out = sh("launch/gpu_node.sh", "--gpus=0,1", "--dry_run", "--", "--gin_file=a.gin")
  assert "CUDA_VISIBLE_DEVICES=0,1" in out and "codegen2_jax.train --gin_file=a.gin" in out
  out = sh("launch/gpu_slurm.sh", "--nodes=4", "--partition=gpu", "--dry_run", "--",
           "--gin_file=gin/runs/pretrain_7b.gin", "--model_dir=/ck")
  assert "#SBATCH --nodes=4" in out and "#SBATCH --partition=gpu" in out
  assert "JAX_COORDINATOR_ADDRESS=" in out and "JAX_PROCESS_ID=$SLURM_PROCID" in out
  assert "--gin_file=gin/runs/pretrain_7b.gin" in out


def test_launch_scripts_refuse_missing_arguments():
  r = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry_run", "--", "x"], cwd=REPO,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "--tpu and --zone are required" in r.stderr
