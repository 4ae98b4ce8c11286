"""Small helpers the offline tools share: output folders, parameter counts."""

from __future__ import annotations

import os
import shutil
import tempfile

from openrlhf.utils.atomic import plain_permissions
from openrlhf.utils.errors import UserError


def make_temp_dir(output_dir: str) -> str:
    """An empty sibling folder of ``output_dir`` (same filesystem, so it can be renamed into place)."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(output_dir))}.tmp-")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final folder should not be
    return tmp


def move_into_place(tmp: str, output_dir: str) -> None:
    """Replace ``output_dir`` (absent or empty, or replaced on purpose) by the finished ``tmp``."""
    plain_permissions(tmp)  # safetensors writes its weights 0600
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir):
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)


def check_output_dir(output_dir: str, flag: str, overwrite: bool = False, hint: str = "") -> None:
    """Refuse a file, or a non-empty folder unless ``overwrite`` (before any expensive work)."""
    path = os.path.abspath(os.path.expanduser(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}: {output_dir} is a file, expected a folder")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise UserError(f"{flag}: {output_dir} exists and is not empty; {hint or 'choose another folder or empty it'}")


def count_params(model) -> int:
    """Parameters of ``model``; tied tensors (embeddings / LM head) count once."""
    return sum(p.numel() for p in model.parameters())
