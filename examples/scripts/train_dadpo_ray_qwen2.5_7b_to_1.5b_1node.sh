#!/usr/bin/env bash
# daDPO on a Ray cluster of one node with 8 GPUs, paper setting 1 (Qwen2.5-7B-Instruct -> Qwen2.5-1.5B-Instruct).
# The policy (8 actors, ZeRO-3), the reference and the teacher (8 actors each, frozen, ZeRO-3 sharded) share
# the same 8 GPUs (--train.colocate_all): the frozen groups score every pair first, then free the GPUs for the
# policy (never computing beside it). Paths must be the same on every node (a shared filesystem).
#
#   ray start --head --port 6379 --dashboard-host 0.0.0.0      # once, on the node
#   bash examples/scripts/train_dadpo_ray_qwen2.5_7b_to_1.5b_1node.sh
#
# HEAD: the head node's address (default this machine). The job runs from this folder (working_dir).
set -euo pipefail
HEAD=${HEAD:-127.0.0.1}
SFT=${SFT:-$PWD/runs/qwen2.5-1.5b-dsft}
BETA=${BETA:-0.1}
TEACHER_BETA=${TEACHER_BETA:-0.01}
ray job submit --address "http://${HEAD}:8265" --runtime-env-json '{"working_dir": "."}' -- \
  python -m openrlhf.cli.train_dadpo_ray \
  --actor.num_nodes 1 --actor.num_gpus_per_node 8 \
  --ref.num_nodes 1 --ref.num_gpus_per_node 8 \
  --teacher.num_nodes 1 --teacher.num_gpus_per_node 8 \
  --train.colocate_all \
  --model.model_name_or_path "$SFT" --ref.model_name_or_path "$SFT" \
  --teacher.model_name_or_path Qwen/Qwen2.5-7B-Instruct \
  --model.beta "$BETA" --teacher.beta "$TEACHER_BETA" \
  --model.gradient_checkpointing_enable \
  --data.dataset "$PWD/data/qwen/preference_train.jsonl" --data.prompt_key prompt \
  --data.apply_chat_template --data.max_len 2048 \
  --train.micro_batch_size 1 --train.batch_size 32 --train.max_epochs 1 \
  --adam.lr 5e-7 --lr_scheduler cosine_with_min_lr --lr_warmup_ratio 0.1 \
  --ds.zero_stage 3 --ds.param_dtype bf16 --ds.attn_implementation flash_attention_2 \
  --ckpt.output_dir "$PWD/runs/qwen2.5-1.5b-dadpo-ray-b${BETA}-tb${TEACHER_BETA}" --ckpt.save_steps 100 \
  --logger.logging_steps 1 "$@"
