"""Response generation (hf / vLLM), the preference and SFT sets built from it, and
ShareGPT prompt preparation.

Light on import: names resolve lazily, so ``import openrlhf.generation`` pulls in
neither torch nor transformers nor vllm.
"""

from importlib import import_module

_EXPORTS = {
    "PromptItem": "prompts",
    "extract_prompts": "prompts",
    "first_human_turn": "prompts",
    "render_prompt_ids": "prompts",
    "stop_token_ids": "prompts",
    "ResultsFile": "outputs",
    "trim_response": "outputs",
    "HFGenerator": "hf_backend",
    "VLLMGenerator": "vllm_backend",
    "VLLMSettings": "vllm_backend",
    "run_vllm": "vllm_backend",
    "build_sets": "sets",
    "iter_json_array": "sharegpt",
    "prepare_prompts": "sharegpt",
    "sharegpt_path": "sharegpt",
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
