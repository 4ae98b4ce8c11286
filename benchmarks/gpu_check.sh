#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): run from the repository root on a GPU machine, with the carried
# wheels in .whl/ (docs/ray-and-gpu.md "On a GPU machine"). Its log and gpu_check.json go to $OUT when set (the device
# tool returns what is written there), else to /tmp/gpu_check. Extra arguments go to gpu_check.py
# (--parts a1,a2 --budget_s 560).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
exec "$PY" benchmarks/gpu_check.py "$@"
