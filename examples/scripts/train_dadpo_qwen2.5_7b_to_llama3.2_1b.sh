#!/usr/bin/env bash
# daDPO, paper setting 3 (cross-family): Qwen2.5-7B-Instruct teacher -> Llama-3.2-1B-Instruct student.
# Teacher log-probs are sentence-level: each pair is rendered with Qwen's chat template and
# tokenized with Qwen's tokenizer, so the two vocabularies never meet.
# Optional: cache the teacher once (then the teacher is not loaded during training):
#   deepspeed --num_gpus 8 --module openrlhf.cli.score_logps --model.model_name_or_path "$SFT" \
#     --teacher.model_name_or_path Qwen/Qwen2.5-7B-Instruct --ref.model_name_or_path "$SFT" \
#     --data.dataset data/llama/preference_train.jsonl --data.prompt_key prompt --data.apply_chat_template \
#     --ds.zero_stage 3 --ds.param_dtype bf16 --train.micro_batch_size 4 --ckpt.output_dir data/llama/scored
#   and pass --data.dataset data/llama/scored.
# Paper grid: BETA in {0.01, 0.1, 1.0}, TEACHER_BETA in {0.001, 0.01, 0.1, 1.0}.
set -euo pipefail
SFT=${SFT:-runs/llama3.2-1b-dsft}
BETA=${BETA:-0.1}
TEACHER_BETA=${TEACHER_BETA:-0.01}
DATA=${DATA:-data/llama/preference_train.jsonl}
deepspeed --num_gpus 8 --module openrlhf.cli.train_dadpo \
  --model.model_name_or_path "$SFT" --ref.model_name_or_path "$SFT" \
  --teacher.model_name_or_path Qwen/Qwen2.5-7B-Instruct \
  --model.beta "$BETA" --teacher.beta "$TEACHER_BETA" \
  --model.gradient_checkpointing_enable \
  --data.dataset "$DATA" --data.prompt_key prompt \
  --data.apply_chat_template --data.max_len 2048 \
  --train.micro_batch_size 1 --train.batch_size 32 --train.max_epochs 1 \
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir "runs/llama3.2-1b-dadpo-b${BETA}-tb${TEACHER_BETA}" --ckpt.save_steps 100 \
  --logger.logging_steps 1 "$@"
