"""Offline tools: GGUF -> HF conversion (``gguf_convert``), structured pruning (``prune``), offline evaluation
(``evaluate``), LoRA adapter merging (``lora_combine``)."""
