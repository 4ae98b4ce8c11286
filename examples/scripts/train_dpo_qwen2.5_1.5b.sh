#!/usr/bin/env bash
# dDPO of the dSFT student (teacher response = chosen, student response = rejected):
# 8 GPUs, ZeRO-3, bf16, flash-attn; the reference is the dSFT model.
set -euo pipefail
SFT=${SFT:-runs/qwen2.5-1.5b-dsft}
deepspeed --num_gpus 8 --module openrlhf.cli.train_dpo \
  --model.model_name_or_path "$SFT" --ref.model_name_or_path "$SFT" \
  --model.gradient_checkpointing_enable \
  --model.beta 0.1 \
  --data.dataset data/preference_train.jsonl \
  --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected \
  --data.apply_chat_template --data.max_len 2048 \
  --train.micro_batch_size 1 --train.batch_size 32 --train.max_epochs 1 \
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir runs/qwen2.5-1.5b-ddpo --ckpt.save_steps 100 \
  --logger.logging_steps 1 "$@"
