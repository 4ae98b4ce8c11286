#!/usr/bin/env bash
# Algorithm 1 end to end on one 8-GPU node (paper setting 1), from one YAML file:
# vLLM generation (8 engines), dSFT, cached teacher/reference log-probs, daDPO and dDPO
# as 8-GPU DeepSpeed ZeRO-3 jobs, then the offline report. Rerun the same command to resume.
# Needs: pip install -e ".[vllm,flash,demo]"
set -euo pipefail
python -m openrlhf.cli.distill --config examples/configs/distill_qwen2.5_7b_to_1.5b_gpu.yaml "$@"
