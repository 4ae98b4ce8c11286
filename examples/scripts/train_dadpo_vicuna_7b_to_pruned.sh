#!/usr/bin/env bash
# daDPO, paper setting 2: Vicuna-7B teacher -> a structurally pruned copy of it as the student
# (make it with: python -m openrlhf.cli.prune --model.model_name_or_path lmsys/vicuna-7b-v1.5 ...,
#  then dSFT it). Vicuna ships no chat template, so both sides get the Vicuna v1.1 one.
# Paper grid: BETA in {0.01, 0.1, 1.0}, TEACHER_BETA in {0.001, 0.01, 0.1, 1.0}.
set -euo pipefail
SFT=${SFT:-runs/vicuna-pruned-dsft}
BETA=${BETA:-0.1}
TEACHER_BETA=${TEACHER_BETA:-0.01}
TEMPLATE=$(cat "$(dirname "$0")/../templates/vicuna_v1.1.jinja")
deepspeed --num_gpus 8 --module openrlhf.cli.train_dadpo \
  --model.model_name_or_path "$SFT" --ref.model_name_or_path "$SFT" \
  --teacher.model_name_or_path lmsys/vicuna-7b-v1.5 \
  --model.beta "$BETA" --teacher.beta "$TEACHER_BETA" \
  --model.gradient_checkpointing_enable \
  --data.dataset data/vicuna/preference_train.jsonl --data.prompt_key prompt \
  --data.apply_chat_template --data.max_len 2048 \
  --data.tokenizer_chat_template "$TEMPLATE" --teacher.tokenizer_chat_template "$TEMPLATE" \
  --train.micro_batch_size 1 --train.batch_size 32 --train.max_epochs 1 \
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir "runs/vicuna-pruned-dadpo-b${BETA}-tb${TEACHER_BETA}" --ckpt.save_steps 100 \
  --logger.logging_steps 1 "$@"
