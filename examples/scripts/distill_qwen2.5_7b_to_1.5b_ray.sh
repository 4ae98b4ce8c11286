#!/usr/bin/env bash
# Algorithm 1 end to end as one Ray job (paper setting 1): every stage on the cluster (vLLM engine actors,
# DeepSpeed actor groups). Submit it again to resume: finished stages are skipped.
# Needs on every node: pip install -e ".[ray,vllm,flash,demo]"; a cluster started with
#   ray start --head --port 6379 --dashboard-host 0.0.0.0     (and `ray start --address HEAD:6379` on others)
set -euo pipefail
HEAD=${HEAD:-127.0.0.1}
ray job submit --address "http://${HEAD}:8265" --runtime-env-json '{"working_dir": "."}' -- \
  python -m openrlhf.cli.distill --config examples/configs/distill_qwen2.5_7b_to_1.5b_ray.yaml "$@"
