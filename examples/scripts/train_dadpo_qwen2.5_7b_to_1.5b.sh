#!/usr/bin/env bash
# daDPO, paper setting 1: Qwen2.5-7B-Instruct teacher -> Qwen2.5-1.5B-Instruct student.
# The policy starts from the dSFT student and the reference is that dSFT model (Algorithm 1).
# Paper grid: BETA in {0.01, 0.1, 1.0} (--model.beta = beta1), TEACHER_BETA in {0.001, 0.01, 0.1, 1.0}.
# 8 GPUs, ZeRO-3 (the frozen teacher and reference are sharded too), bf16, batch 32, lr 5e-7.
set -euo pipefail
SFT=${SFT:-runs/qwen2.5-1.5b-dsft}
BETA=${BETA:-0.1}
TEACHER_BETA=${TEACHER_BETA:-0.01}
deepspeed --num_gpus 8 --module openrlhf.cli.train_dadpo \
  --model.model_name_or_path "$SFT" --ref.model_name_or_path "$SFT" \
  --teacher.model_name_or_path Qwen/Qwen2.5-7B-Instruct \
  --model.beta "$BETA" --teacher.beta "$TEACHER_BETA" \
  --model.gradient_checkpointing_enable \
  --data.dataset data/qwen/preference_train.jsonl \
  --data.prompt_key prompt --data.chosen_key chosen --data.rejected_key rejected \
  --data.apply_chat_template --data.max_len 2048 \
  --train.micro_batch_size 1 --train.batch_size 32 --train.max_epochs 1 \
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir "runs/qwen2.5-1.5b-dadpo-b${BETA}-tb${TEACHER_BETA}" --ckpt.save_steps 100 \
  --logger.logging_steps 1 "$@"
