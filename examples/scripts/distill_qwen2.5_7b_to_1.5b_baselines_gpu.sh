#!/usr/bin/env bash
# Every method of the paper's Table 1 plus the Fig. 5 beta grid (12 daDPO runs) on one 8-GPU node,
# from one YAML file: one generation pass, one dSFT, one scoring pass, then 17 training runs
# (each an 8-GPU DeepSpeed ZeRO-3 job), the held-out responses of every model and the report
# (report/report.md, report/sweep.png). Rerun the same command to resume; finished runs are skipped.
# Needs: pip install -e ".[vllm,flash,demo]"
set -euo pipefail
python -m openrlhf.cli.distill --config examples/configs/distill_qwen2.5_7b_to_1.5b_baselines_gpu.yaml "$@"
