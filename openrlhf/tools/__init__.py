"""Offline tools: GGUF -> HF conversion (``gguf_convert``), structured pruning (``prune``), LoRA adapter merging
(``lora_combine``). The offline evaluation lives in :mod:`openrlhf.eval.offline`."""
