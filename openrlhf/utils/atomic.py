"""Whole-or-nothing file writes: a temp file in the same folder, fsync, ``os.replace``."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from typing import IO, Iterator


def fsync_dir(folder: str) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_temp_file(folder: str, name: str) -> tuple:
    """``mkstemp`` in ``folder`` for a file that will be renamed to ``name``, with the permissions a
    plain ``open`` would give (mkstemp makes 0600 files: outputs a shared cluster's group could not read)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:  # Ctrl-C / SIGTERM here must not leave the temp file behind
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def is_temp_file_of(filename: str, name: str) -> bool:
    """Whether ``filename`` is a temp file :func:`make_temp_file` made for ``name`` (one a process killed
    mid-write can leave behind)."""
    return filename.startswith("." + name + ".") and filename.endswith(".tmp")


def plain_permissions(folder: str) -> None:
    """Give every file under ``folder`` the permissions a plain ``open`` would (0644 under umask 022) and every
    folder those of ``mkdir``: writers such as safetensors make their files 0600, which the group of a shared
    cluster cannot read."""
    mask = _umask()
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting and restoring
    it would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)``: readers see the old file or the whole new
    one, never a part; on an exception the temp file is removed and ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = None
    try:
        fd, tmp = make_temp_file(folder, os.path.basename(path))
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
