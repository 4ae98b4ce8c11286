"""Response generation (``hf_backend``, ``vllm_backend``, ``ray_engines``), the preference and SFT sets built from it
(``sets``) and ShareGPT prompt preparation (``sharegpt``, ``prompts``, ``outputs``)."""
