"""Offline tools: GGUF -> HF conversion, structured pruning, offline evaluation.

Light on import: names are resolved lazily, so ``import openrlhf.tools`` pulls in
neither torch nor transformers.
"""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "convert_gguf": ".gguf_convert",
    "smollm2_gguf_path": ".gguf_convert",
    "gemma3_gguf_path": ".gguf_convert",
    "prune_model": ".prune",
    "evaluate_responses": ".evaluate",
    "rouge_l": ".evaluate",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
