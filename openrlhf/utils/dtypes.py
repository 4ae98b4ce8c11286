"""``--ds.param_dtype`` names (bf16 / fp16 / fp32, declared in :data:`~openrlhf.utils.deepspeed.ds_config.PARAM_DTYPES`,
with the other choices that config/ parses without torch) -> torch dtypes."""

from __future__ import annotations

import torch

from openrlhf.utils.deepspeed.ds_config import PARAM_DTYPES
from openrlhf.utils.errors import UserError


def torch_dtype_name(name: str, flag: str = "--ds.param_dtype") -> str:
    """``"bf16"`` -> ``"bfloat16"`` (the name vLLM and transformers take)."""
    try:
        return PARAM_DTYPES[name]
    except KeyError:
        raise UserError(f"{flag}: unknown dtype {name!r}; expected one of {', '.join(PARAM_DTYPES)}") from None


def torch_dtype(name: str, flag: str = "--ds.param_dtype") -> torch.dtype:
    return getattr(torch, torch_dtype_name(name, flag))
