"""The torch device a single-process tool runs on (pruning, offline evaluation)."""

from __future__ import annotations

from typing import Optional

import torch


def pick_device(device: Optional[str] = None) -> torch.device:
    """``device`` when given, else the first GPU when there is one, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
