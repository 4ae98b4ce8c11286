"""A full disk during a write that matters (a checkpoint, the final model, generated answers): one line that says
so, how much the write needed and where, instead of a traceback; what was complete before is kept by the
callers (temp folders, append-only files)."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from openrlhf.utils.errors import UserError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")
# What torch's serializer says when any of its writes fails (it gives no errno): a full disk only when the
# filesystem has less than this left.
_WRITE_FAILED, _NEARLY_FULL = "file write failed", 256 * 2**20


def is_disk_full(error: BaseException, where: str = "") -> bool:
    """Whether ``error`` (or an error it was raised from) is a write that found the disk or the quota full
    (``where``: the folder written, to tell torch's errno-less write failures)."""
    seen = set()
    e: Optional[BaseException] = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if any(m in str(e) for m in _FULL_MESSAGES):
            return True
        if where and _WRITE_FAILED in str(e):
            free = free_bytes(where)
            return free is not None and free < _NEARLY_FULL
        e = e.__cause__ or e.__context__
    return False


def free_bytes(path: str) -> Optional[int]:
    """Free bytes on the filesystem of ``path`` (its nearest existing folder); None when it cannot be read."""
    folder = os.path.abspath(path)
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        return shutil.disk_usage(folder or "/").free
    except OSError:
        return None


def human(n: Optional[int]) -> str:
    """``n`` bytes as a short size (``1.5 GB``); ``unknown`` for None."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@contextmanager
def disk_full_is_one_line(what: str, where: str, need: Callable[[], Optional[int]], kept: str) -> Iterator[None]:
    """Inside the block, a write that finds the disk full becomes one :class:`UserError`: ``what`` (the write)
    in ``where`` needs about ``need()`` bytes, with the free bytes there now and ``kept`` (what the caller kept).
    Any other error passes unchanged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 (re-raised unless it is a full disk)
        if not is_disk_full(e, where):
            raise
        try:
            needed = need()
        except Exception:  # noqa: BLE001 (an estimate only)
            needed = None
        raise UserError(
            f"the disk is full: {what} in {where} needs about {human(needed)} and {human(free_bytes(where))} "
            f"is free there ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else e!r}); "
            f"{kept}"
        ) from None
