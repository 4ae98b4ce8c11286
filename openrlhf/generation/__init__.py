"""Response generation (hf / vLLM), the preference and SFT sets built from it, and
ShareGPT prompt preparation.

Light on import: names resolve lazily, so ``import openrlhf.generation`` pulls in
neither torch nor transformers nor vllm.
"""

from openrlhf.utils.lazy import lazy_exports

_EXPORTS = {
    "PromptItem": ".prompts",
    "extract_prompts": ".prompts",
    "first_human_turn": ".prompts",
    "render_prompt_ids": ".prompts",
    "stop_token_ids": ".prompts",
    "ResultsFile": ".outputs",
    "trim_response": ".outputs",
    "HFGenerator": ".hf_backend",
    "VLLMGenerator": ".vllm_backend",
    "VLLMSettings": ".vllm_backend",
    "run_vllm": ".vllm_backend",
    "build_sets": ".sets",
    "iter_json_array": ".sharegpt",
    "prepare_prompts": ".sharegpt",
    "sharegpt_path": ".sharegpt",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
