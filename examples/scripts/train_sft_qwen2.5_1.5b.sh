#!/usr/bin/env bash
# dSFT of Qwen2.5-1.5B-Instruct on teacher responses: 8 GPUs, ZeRO-3, bf16, flash-attn.
# Data: JSONL rows {"prompt": ..., "response": ...} (see docs/data-formats.md).
set -euo pipefail
deepspeed --num_gpus 8 --module openrlhf.cli.train_sft \
  --model.model_name_or_path Qwen/Qwen2.5-1.5B-Instruct \
  --model.gradient_checkpointing_enable \
  --data.dataset data/sft_train.jsonl \
  --data.input_key prompt --data.output_key response \
  --data.apply_chat_template \
  --data.max_len 2048 \
  --train.micro_batch_size 2 --train.batch_size 32 --train.max_epochs 3 \
  --adam.lr 5e-6 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.03 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir runs/qwen2.5-1.5b-dsft --ckpt.save_steps 200 --ckpt.max_num 2 \
  --logger.logging_steps 1 "$@"
