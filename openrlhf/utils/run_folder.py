"""One run per output folder: a folder that holds a finished or killed run's files is refused unless the
user resumes or overwrites, and a running command holds a lock file in its folder so that a second run
into the same folder is refused (naming the first one's PID and host) instead of interleaving with it.

The lock is ``<folder>/.openrlhf.lock`` (JSON: pid, host, started, command), created with O_CREAT|O_EXCL.
A lock whose process is gone (same host, PID not alive) is stale and taken over with one printed line;
one left on another host cannot be checked from here and is refused with the file to delete. The lock
is released by :meth:`RunLock.release` (the recipes call it when their run ends) and at interpreter exit
(an error, Ctrl-C or SIGTERM included); a folder that taking the lock created is removed then if it is empty again
(a run refused for bad input leaves nothing behind). A process ended by a signal it does not handle
(SIGKILL, or SIGTERM outside the CLIs) leaves its lock behind, and the next run takes it over as stale.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import sys
import time
from typing import Callable, List, Optional, Sequence

from openrlhf.utils.errors import UserError

LOCK_NAME = ".openrlhf.lock"


def run_files(folder: str, marker_files: Sequence[str]) -> List[str]:
    """Which of ``marker_files`` (names inside ``folder``, or absolute paths) exist: a previous run's files."""
    return [m for m in marker_files if os.path.exists(os.path.join(folder, m))]


def check_folder(
    folder: str,
    *,
    what: str,
    resume: bool,
    overwrite: bool,
    marker_files: Sequence[str],
    resume_flag: str = "--ckpt.load_enable",
    overwrite_flag: str = "--ckpt.overwrite",
) -> None:
    """A :class:`UserError` when ``folder`` holds a previous run's files and neither ``resume`` nor
    ``overwrite`` is set (``what``: the flag that names the folder)."""
    found = run_files(folder, marker_files)
    if found and not (resume or overwrite):
        raise UserError(
            f"{what} {folder} already holds a run ({', '.join(found)}): pass {resume_flag} to resume it, "
            f"{overwrite_flag} to replace it, or choose another folder"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_lock(path: str) -> Optional[dict]:
    """The lock's record; {} when it cannot be parsed (being written, or damaged); None when it is gone."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


class RunLock:
    """The lock this process holds on one folder; :meth:`release` (idempotent) removes the lock file."""

    def __init__(self, path: str, record: dict, created_folder: bool = False) -> None:
        self.path = path
        self.record = record
        self.created_folder = created_folder  # take_lock made the folder: removed on release if left empty
        self.released = False
        atexit.register(self.release)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        atexit.unregister(self.release)
        current = _read_lock(self.path)
        if current and current.get("pid") == self.record["pid"] and current.get("host") == self.record["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        if self.created_folder:  # a run refused before it wrote anything leaves no empty folder behind
            try:
                os.rmdir(os.path.dirname(self.path))
            except OSError:  # not empty (the run wrote there), or already gone
                pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take_lock(folder: str, *, what: str, log: Callable[[str], None] = print, lock_name: str = LOCK_NAME) -> RunLock:
    """Create ``folder`` and its lock file ``lock_name``; a :class:`UserError` naming the PID and host of the
    live run that holds it. A stale lock (its process gone) is taken over; a lock this very process left
    behind (an earlier run in it that raised) is taken back."""
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, lock_name)
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host, "started": time.time(), "command": " ".join(sys.argv)}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            fd = None
        if fd is None:
            other = _read_lock(path)
            if other is None:  # released between our open and our read
                continue
            if not other:  # being written right now by a run that just started
                time.sleep(0.2)
                other = _read_lock(path)
                if other is None:
                    continue
            pid, where = other.get("pid"), other.get("host")
            if not isinstance(pid, int) or where is None:
                raise UserError(
                    f"{what} {folder}: its lock file {path} is damaged; delete it if no run uses the folder"
                )
            if where != host or (pid != os.getpid() and _pid_alive(pid)):
                # another host's run cannot be checked from here: the user says when it is gone
                gone = f" (delete {path} if that run is gone)" if where != host else ""
                raise UserError(
                    f"{what} {folder} is in use by another run (PID {pid} on host {where}, {other.get('command', '')}); "
                    f"wait for it or choose another folder{gone}"
                )
            if pid != os.getpid():
                log(f"{what} {folder}: taking over the lock left by a run that ended without releasing it (PID {pid})")
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return RunLock(path, record, created_folder=created)
    raise UserError(f"{what} {folder}: could not take its lock {path} (other runs keep taking it)")


def lock_output_file(path: str, *, what: str, log: Callable[[str], None] = print) -> RunLock:
    """A lock on one output file (``<its folder>/.<its name>.lock``) for commands that append to a file and
    resume it by design (generate): two runs writing one file at once are refused."""
    folder, name = os.path.split(os.path.abspath(path))
    return take_lock(folder, what=f"{what} {name} in", log=log, lock_name=f".{name}.lock")


def claim(
    folder: str,
    *,
    what: str,
    resume: bool = False,
    overwrite: bool = False,
    marker_files: Sequence[str] = (),
    resume_flag: str = "--ckpt.load_enable",
    overwrite_flag: str = "--ckpt.overwrite",
    clear: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> RunLock:
    """Refuse a folder holding a previous run (:func:`check_folder`), then lock it (:func:`take_lock`). With
    ``overwrite`` (and no ``resume``), ``clear`` (names inside ``folder``, or absolute paths: what the new run
    would otherwise append to or resume from) is deleted once the lock is held."""
    check_folder(
        folder,
        what=what,
        resume=resume,
        overwrite=overwrite,
        marker_files=marker_files,
        resume_flag=resume_flag,
        overwrite_flag=overwrite_flag,
    )
    lock = take_lock(folder, what=what, log=log)
    if overwrite and not resume:
        clear_previous_run(folder, clear, overwrite_flag, log)
    return lock


def clear_previous_run(
    folder: str, clear: Sequence[str], overwrite_flag: str = "--ckpt.overwrite", log: Callable[[str], None] = print
) -> None:
    """Delete what of ``clear`` (names inside ``folder``, or absolute paths) exists: the previous run's files
    a new run would otherwise append to or resume from. Call it holding the folder's lock."""
    for name in run_files(folder, clear):
        target = os.path.join(folder, name)
        log(f"{overwrite_flag}: removing {target} of the previous run")
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.remove(target)
