"""``--ds.param_dtype`` names (bf16 / fp16 / fp32) -> torch dtypes. The names live in
:data:`openrlhf.config.schema.PARAM_DTYPES`; this is the one place that maps them."""

from __future__ import annotations

from openrlhf.config.schema import PARAM_DTYPES
from openrlhf.utils.errors import UserError


def torch_dtype_name(name: str, flag: str = "--ds.param_dtype") -> str:
    """``"bf16"`` -> ``"bfloat16"`` (the name vLLM and transformers take)."""
    try:
        return PARAM_DTYPES[name]
    except KeyError:
        raise UserError(f"{flag}: unknown dtype {name!r}; expected one of {', '.join(PARAM_DTYPES)}") from None


def torch_dtype(name: str, flag: str = "--ds.param_dtype"):
    import torch

    return getattr(torch, torch_dtype_name(name, flag))
