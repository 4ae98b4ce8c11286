"""What wraps an HF model here (a DeepSpeed engine, an :class:`~openrlhf.models.actor.Actor`) and the
names its state dict goes under through such a wrapper. torch only."""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def unwrap_model(model: Any) -> nn.Module:
    """The HF module inside a DeepSpeed engine and/or an :class:`~openrlhf.models.actor.Actor`."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    # An Actor keeps its HF model under ``.model``.
    if wraps_hf_model(model):
        model = model.model
    return model


def wraps_hf_model(module: nn.Module) -> bool:
    """An :class:`~openrlhf.models.actor.Actor`-like wrapper: no ``save_pretrained`` of its own, the HF
    model under ``.model``."""
    return not hasattr(module, "save_pretrained") and isinstance(getattr(module, "model", None), nn.Module)


def hf_names_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook of a wrapper: its keys as the HF model's own (``model.`` of the wrapper
    dropped), the names OpenRLHF's checkpoints hold (its DeepSpeed engine wraps the HF model)."""
    inner = prefix + "model."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def load_module_either_naming(src: dict, dst: nn.Module) -> None:
    """DeepSpeed ``custom_load_fn``: a checkpoint's module weights under the HF model's names (ours and
    OpenRLHF's) or under the wrapper's (``model.``-prefixed, checkpoints of earlier versions), strictly."""
    if wraps_hf_model(dst) and set(src) == set(dst.model.state_dict(keep_vars=True)):
        dst.model.load_state_dict(src, strict=True)
    else:
        dst.load_state_dict(src, strict=True)
