"""LoRA weights outside peft: merging trained adapters into the base weights of a state dict."""

from __future__ import annotations

# The key bitsandbytes stores, next to a 4-bit weight, with the packed quantisation state (nf4 or fp4).
_QUANT_STATE = ".weight.quant_state.bitsandbytes__"


def dequantize_4bit_state_dict(state: dict) -> dict:
    """``state`` with every bitsandbytes 4-bit weight (QLoRA's base: packed uint8 ``[out*in/2, 1]`` plus
    its ``weight.absmax`` / ``weight.quant_map`` / ``weight.nested_*`` / ``weight.quant_state.*`` entries)
    replaced by the plain weight it stands for (``[out, in]``, the dtype it was quantised from) and the
    quantisation entries dropped. Other entries are kept as they are; no bitsandbytes import without
    4-bit weights."""
    prefixes = [k[: k.index(_QUANT_STATE)] for k in state if _QUANT_STATE in k]
    if not prefixes:
        return state
    from bitsandbytes.functional import QuantState, dequantize_4bit

    out = dict(state)
    for prefix in prefixes:
        weight = prefix + ".weight"
        parts = {k[len(weight) + 1 :]: out.pop(k) for k in list(out) if k.startswith(weight + ".")}
        packed = out[weight]
        quant_state = QuantState.from_dict(parts, device=packed.device)
        out[weight] = dequantize_4bit(packed.data, quant_state).to(quant_state.dtype)
    return out


def merge_lora_state_dict(state: dict, scaling: float) -> dict:
    """A peft model's full state dict -> the base model's, with ``W + scaling * B @ A`` merged into
    every adapted weight (``base_model.model.`` prefixes and ``.base_layer`` dropped). 4-bit base
    weights (QLoRA) are dequantized first (:func:`dequantize_4bit_state_dict`), so the result is a plain
    state dict in the weights' original dtype."""
    state = dequantize_4bit_state_dict(state)
    merged = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key or "lora_embedding" in key:
            continue
        name = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
        if ".base_layer." in name:
            prefix = key.split(".base_layer.")[0]
            a = next((v for k, v in state.items() if k.startswith(prefix + ".lora_A.") and k.endswith(".weight")), None)
            b = next((v for k, v in state.items() if k.startswith(prefix + ".lora_B.") and k.endswith(".weight")), None)
            name = name.replace(".base_layer.", ".")
            if a is not None and b is not None and name.endswith(".weight"):
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        merged[name] = value
    return merged
