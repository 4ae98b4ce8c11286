"""``--ds.param_dtype`` names (bf16 / fp16 / fp32) -> torch dtypes: the one place that declares and maps
them (:mod:`openrlhf.config.schema` re-exports :data:`PARAM_DTYPES` with the other choices)."""

from __future__ import annotations

from typing import Dict

from openrlhf.utils.errors import UserError

# --ds.param_dtype (and evaluate / convert_gguf --dtype) -> torch dtype name.
PARAM_DTYPES: Dict[str, str] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype_name(name: str, flag: str = "--ds.param_dtype") -> str:
    """``"bf16"`` -> ``"bfloat16"`` (the name vLLM and transformers take)."""
    try:
        return PARAM_DTYPES[name]
    except KeyError:
        raise UserError(f"{flag}: unknown dtype {name!r}; expected one of {', '.join(PARAM_DTYPES)}") from None


def torch_dtype(name: str, flag: str = "--ds.param_dtype"):
    import torch

    return getattr(torch, torch_dtype_name(name, flag))
