"""Small, dependency-light helpers around process launch and teardown.

Nothing here imports torch, deepspeed or transformers (the CLI's error path uses it before any of them is
imported): a process group can only be up when ``torch.distributed`` is already in ``sys.modules``.
"""

from __future__ import annotations

import os
import socket
import sys

# Environment variables a launcher (deepspeed, torchrun, Ray actors set up by us) provides.
LAUNCH_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; tiny race window)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launched_world_size() -> int:
    """WORLD_SIZE set by a launcher, 1 when running as a plain process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def is_rank_zero_process() -> bool:
    """True unless a launcher set RANK to something other than 0 (for printing once)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def under_launcher() -> bool:
    """True when a multi-process launcher (deepspeed / torchrun / mpirun) started us."""
    return launched_world_size() > 1


def destroy_process_group() -> None:
    """Tear down torch.distributed (and DeepSpeed's view of it) if it is up. Safe to call twice."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return
    # No barrier here: a peer that already died must not make this one hang.
    deepspeed_comm = sys.modules.get("deepspeed.comm.comm")
    if deepspeed_comm is not None and getattr(deepspeed_comm, "cdb", None) is not None:
        try:
            deepspeed_comm.destroy_process_group()
        except Exception:
            if dist.is_initialized():
                dist.destroy_process_group()
    else:
        dist.destroy_process_group()


def exit_cleanly(code: int = 0) -> None:
    """End a CLI entry point: tear down the process group, then, under a multi-process
    launcher, flush stdio and ``os._exit(code)``.

    The hard exit avoids a teardown race seen with the deepspeed launcher on CPU (rank 1
    sometimes aborted *after* finishing with "terminate called without an active
    exception"). Only CLI entry points call this, at their very end; functions that tests
    call in-process never do. As a plain single process it only tears down the group and
    returns.
    """
    destroy_process_group()
    if under_launcher():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def release_shm_allreduce_buffer(rank: int, shm_dir: str = "/dev/shm") -> bool:
    """Unlink this process's DeepSpeed CPU all-reduce segment name; True when one was removed.

    On CPU every DeepSpeed process creates ``<shm_dir>/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``
    (about 67 MB of RAM) and never unlinks it, so each finished run leaves its segments behind until
    the machine restarts. Call it once every rank has mapped its peers' segments (after
    ``init_distributed`` and a barrier): the mappings stay valid, only the names go.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return False
    path = os.path.join(shm_dir, f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
