"""Multi-host start-up: jax.distributed, from flags, the environment, or cluster detection.

    explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I
               (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)
    TPU pod    nothing to pass: detected from the TPU VM's environment
    Slurm      nothing to pass inside `srun` with more than one task
    otherwise  one process (nothing is initialised)

On CPU the collectives run over gloo (two local processes test the multi-host paths).
"""

from __future__ import annotations

import logging
import os

import jax


def _cluster_detected() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  # Multi-worker TPU VMs list their workers here.
  return len(os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initialises jax.distributed when more than one process takes part; returns whether
  it did. Must run before anything touches a JAX device."""
  addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  n = num_processes if num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
  i = process_id if process_id is not None else os.environ.get("JAX_PROCESS_ID")
  if addr or _cluster_detected():
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if addr:
    if n is None or i is None:
      raise ValueError("a coordinator address needs --num_processes and --process_id "
                       "(or JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
    jax.distributed.initialize(addr, int(n), int(i))
  elif _cluster_detected():
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
