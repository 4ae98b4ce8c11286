"""LoRA weights outside peft: merging trained adapters into the base weights of a state dict."""

from __future__ import annotations


def merge_lora_state_dict(state: dict, scaling: float) -> dict:
    """A peft model's full state dict -> the base model's, with ``W + scaling * B @ A`` merged into
    every adapted weight (``base_model.model.`` prefixes and ``.base_layer`` dropped)."""
    merged = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key or "lora_embedding" in key:
            continue
        name = key[len("base_model.model."):] if key.startswith("base_model.model.") else key
        if ".base_layer." in name:
            prefix = key.split(".base_layer.")[0]
            a = next((v for k, v in state.items() if k.startswith(prefix + ".lora_A.") and k.endswith(".weight")), None)
            b = next((v for k, v in state.items() if k.startswith(prefix + ".lora_B.") and k.endswith(".weight")), None)
            name = name.replace(".base_layer.", ".")
            if a is not None and b is not None and name.endswith(".weight"):
                value = (value.float() + scaling * (b.float() @ a.float())).to(value.dtype)
        merged[name] = value
    return merged
