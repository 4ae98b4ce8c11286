"""Checks that an output path can be written, done before any expensive work starts."""

from __future__ import annotations

import os
from typing import List, Optional


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def output_dir_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be (or become) a writable folder, or None."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        return f"{path} is a file, expected a folder"
    existing = _nearest_existing(full)
    if not os.path.isdir(existing):
        return f"{path} cannot be created: {existing} is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{path} is not writable ({existing} does not allow writing)"
    return None


def output_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be (or become) a writable file, or None."""
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        return f"{path} is a folder, expected a file"
    if os.path.exists(full):
        return None if os.access(full, os.W_OK) else f"{path} is not writable"
    return output_dir_problem(os.path.dirname(full))


def split_sources(spec: str) -> List[str]:
    """The sources of a --data.dataset / --eval.dataset value: comma-separated, blanks ignored."""
    return [s.strip() for s in (spec or "").split(",") if s.strip()]
