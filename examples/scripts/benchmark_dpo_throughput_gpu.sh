#!/usr/bin/env bash
# The DPO / daDPO throughput benchmark on one GPU (bf16, flash-attention 2, packing among the
# configurations), this project next to TRL's DPOTrainer. Needs: pip install -e ".[flash,demo]" trl
# MODEL: a local HF folder of any causal LM, or a hub id (fetched once into the Hugging Face cache).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}
python benchmarks/dpo_throughput.py --model "$MODEL" --param_dtype bf16 --attn_implementation flash_attention_2 \
  --zero_stage 2 --pairs 256 --steps 8 --batch 32 --micro 4 --max_len 2048 --threads 8 "$@"
