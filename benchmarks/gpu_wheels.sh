#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels that benchmarks/gpu_check.sh and benchmarks/gpu_throughput.py
# install on a GPU machine lacking them (the device machine has its own torch and transformers, no internet):
# 48 MiB, so that the repository and .whl stay under the device tool's 64 MiB (carry [".whl"]).
# Run on a machine with PyPI access, in an environment with torch and pip (deepspeed's wheel is built here
# without its compiled ops: DeepSpeed builds FusedAdam by its JIT on the GPU).
# WITH_PYDANTIC=1 adds deepspeed's pydantic and psutil (+9.6 MiB: pydantic-core for CPython 3.10-3.13); the
# device machine had both when deepspeed last ran there. Only the wheels that suit the device's Python and
# that it lacks get installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
mkdir -p .whl
"$PY" -m pip download --no-deps -d .whl \
  trl==1.16.0 accelerate==1.16.0 peft==0.21.2 liger-kernel==0.8.5 bitsandbytes==0.50.2 \
  hjson==3.1.0 py-cpuinfo==9.0.0 einops==0.8.2 ninja==1.13.2 \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
"$PY" -m pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8
if [ "${WITH_PYDANTIC:-0}" = 1 ]; then
  "$PY" -m pip download --no-deps -d .whl --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
    pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 psutil==7.2.2
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download --no-deps -d .whl --only-binary=:all: --platform manylinux2014_x86_64 --python-version "$v" \
      pydantic-core==2.50.5
  done
fi
du -sh .whl
