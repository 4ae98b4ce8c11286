"""Offline tools: GGUF -> HF conversion, structured pruning, offline evaluation.

Light on import: names are resolved lazily, so ``import openrlhf.tools`` pulls in
neither torch nor transformers.
"""

from importlib import import_module

_EXPORTS = {
    "convert_gguf": "gguf_convert",
    "smollm2_gguf_path": "gguf_convert",
    "gemma3_gguf_path": "gguf_convert",
    "prune_model": "prune",
    "evaluate_responses": "evaluate",
    "rouge_l": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
