"""A process's place in the run: joining the process group (under a launcher or as a plain process),
seeding, leaving it again; and the warning about a DeepSpeed op build that an earlier run left locked."""

from __future__ import annotations

import glob
import os
import random
import time
from typing import Dict, Tuple

import deepspeed
import numpy as np
import torch
import torch.distributed as dist
from transformers import enable_full_determinism

from openrlhf.utils.deepspeed.comm import barrier
from openrlhf.utils.distributed import destroy_process_group, find_free_port, release_shm_allreduce_buffer


def join_process_group(env_set: Dict[str, str]) -> Tuple[torch.device, int]:
    """Join (or create) the process group and pick this rank's device; returns (device, local rank).

    - Under ``deepspeed`` / ``torchrun``: uses their RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*.
    - As a plain process: creates a 1-process group on 127.0.0.1 and a free port (it sets the
      missing env vars, which DeepSpeed engines need, and records each in ``env_set`` as it goes, for
      :func:`leave_process_group`).
    - Already initialised (a second strategy in the same process): reuses the group.
    Backend: nccl when CUDA is available, gloo otherwise.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
            defaults = {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(find_free_port()),
            }
            for k, v in defaults.items():
                if k not in os.environ:
                    os.environ[k] = v
                    env_set[k] = v
        if "LOCAL_RANK" not in os.environ:  # e.g. processes started by Ray
            os.environ["LOCAL_RANK"] = env_set["LOCAL_RANK"] = "0"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if os.environ.get("WORLD_SIZE") == "1" and not dist.is_initialized():
        # A plain single process: an in-memory store, so no TCP port can be taken
        # by another process between choosing it and binding it.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    warn_stale_op_build_locks()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    if not torch.cuda.is_available():
        dist.barrier()  # every rank has mapped its peers' shared-memory segments
        release_shm_allreduce_buffer(dist.get_rank())
    return device, local_rank


def seed_process(seed: int, full_determinism: bool = False) -> None:
    """Seed python, numpy and torch (every CUDA device too); ``full_determinism``: transformers'
    deterministic algorithms as well."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if full_determinism:
        enable_full_determinism(seed)


def leave_process_group(env_set: Dict[str, str]) -> None:
    """Destroy the process group once every rank got here, and remove the env vars
    :func:`join_process_group` set (those still holding the value it gave them)."""
    barrier()  # no rank tears down while another still communicates
    destroy_process_group()
    for k, v in env_set.items():
        if os.environ.get(k) == v:
            del os.environ[k]


def warn_stale_op_build_locks(max_age_s: float = 600.0) -> None:
    """DeepSpeed JIT-compiles small ops (on CPU: its shared-memory comm op) under
    ``TORCH_EXTENSIONS_DIR`` behind a lock file; a build killed half way leaves the lock, and
    every later run then waits on it forever. Say so before that wait can start."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    now = time.time()
    for lock in glob.glob(os.path.join(root, "*", "*", "lock")):
        try:
            age = now - os.path.getmtime(lock)
        except OSError:
            continue
        if age > max_age_s:
            print(
                f"warning: {lock} is {age / 60:.0f} minutes old: a DeepSpeed op build was interrupted. If no "
                "other process is building DeepSpeed ops now, delete that file, or this run waits for it forever.",
                flush=True,
            )
