"""quickstart.sh's checks that come before any install: one clear line and exit 2 for an unknown option, a
Python older than 3.10, --gpu without nvcc (flash-attn compiles) and a disk short of space. (The whole script runs in CI's vLLM leg, up to the
demo's first stage.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tiny import REPO

SCRIPT = os.path.join(REPO, "quickstart.sh")


def _run(args, tmp_path, **env):
    """quickstart.sh with ``env`` over this environment (a None value removes the variable)."""
    base = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    base.update(env)
    base = {k: v for k, v in base.items() if v is not None}
    return subprocess.run(
        [shutil.which("bash"), SCRIPT, *args], capture_output=True, text=True, env=base, timeout=60, cwd=str(tmp_path)
    )


def _fake(tmp_path, name, body):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_unknown_option_is_one_line(tmp_path):
    res = _run(["--bogus"], tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "quickstart: unknown option --bogus (see bash quickstart.sh --help)"


def test_old_python_is_refused_before_anything_is_made(tmp_path):
    old = _fake(tmp_path, "python3.8", 'case "$*" in *version_info*) exit 1 ;; *) echo 3.8.18 ;; esac\n')
    res = _run(["--setup-only"], tmp_path, PYTHON=old)
    assert res.returncode == 2
    assert res.stderr.strip() == f"quickstart: error: Python >= 3.10 is needed; {old} is 3.8.18"
    assert not os.path.exists(os.path.join(REPO, ".venv", "made-by-this-test"))


def test_short_disk_is_refused_with_the_space_needed(tmp_path):
    # df -Pk: 1 GiB available
    _fake(
        tmp_path,
        "df",
        'echo "Filesystem 1024-blocks Used Available Capacity Mounted"\n'
        'echo "/dev/x 100000000 99000000 1048576 99% /"\n',
    )
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    res = _run(["--setup-only"], tmp_path, PATH=path, PYTHON=sys.executable)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("quickstart: error: 1 GiB free on the disk of ")
    assert res.stderr.strip().endswith("need about 15 GiB")
    res = _run(["--setup-only", "--no-vllm"], tmp_path, PATH=path, PYTHON=sys.executable)
    assert res.stderr.strip().endswith("need about 12 GiB")


def test_help_is_the_header_only():
    res = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--no-flash" in res.stdout and "MAX_JOBS" in res.stdout
    assert "set -euo" not in res.stdout and not res.stdout.startswith("!")


def test_gpu_without_nvcc_is_one_line_before_anything_is_installed(tmp_path):
    """--gpu compiles flash-attn (no wheel for torch 2.13), which needs nvcc: where there is none (a PATH
    without it, a CUDA_HOME without it) it is refused in one line before the environment is touched;
    --no-flash sets up without it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "awk"):  # what the script runs before its disk check
        os.symlink(shutil.which(tool), bin_dir / tool)
    (tmp_path / "cuda").mkdir()
    # CUDA_HOME set: only its bin/ counts (as for torch's extension builder), whatever the machine has
    env = dict(PATH=str(bin_dir), PYTHON=sys.executable, CUDA_HOME=str(tmp_path / "cuda"), CUDA_PATH=None)
    res = _run(["--gpu", "--setup-only"], tmp_path, **env)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"quickstart: error: --gpu builds flash-attn from source and needs nvcc (the CUDA toolkit), none in "
        f"{tmp_path / 'cuda'}/bin (CUDA_HOME / CUDA_PATH); install the toolkit (the CUDA major version of torch's "
        "build) or set CUDA_HOME, or add --no-flash (attention then uses sdpa)"
    )
    assert res.stdout == ""  # nothing made, nothing installed
    if not os.path.exists("/usr/local/cuda/bin/nvcc"):  # else the script rightly finds that one
        res = _run(["--gpu", "--setup-only"], tmp_path, **{**env, "CUDA_HOME": None})
        assert res.returncode == 2 and "needs nvcc (the CUDA toolkit), none on PATH nor in /usr/local/cuda/bin;" in (
            res.stderr
        )
    # with nvcc there, or with --no-flash, the next check (the disk, made to look full) speaks instead
    _fake(tmp_path, "df", 'echo "Filesystem 1024-blocks Used Available"\necho "/dev/x 100000000 99000000 1048576"\n')
    res = _run(["--gpu", "--no-flash", "--setup-only"], tmp_path, **env)
    assert res.returncode == 2 and res.stderr.strip().endswith("need about 25 GiB")
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir()
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release 12.8, V12.8.93"\n')
    nvcc.chmod(0o755)
    res = _run(["--gpu", "--setup-only"], tmp_path, **env)
    assert res.returncode == 2 and res.stderr.strip().endswith("need about 25 GiB")


def test_setup_only_with_flags_for_the_run_is_refused(tmp_path):
    """--setup-only runs nothing: flags after -- (for the run) would be dropped without a word; refused."""
    res = _run(["--setup-only", "--", "--run_dir", "x"], tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == (
        "quickstart: error: --setup-only runs nothing, so the flags after -- (--run_dir x) would go unused: drop "
        "--setup-only or those flags"
    )


def test_gpu_on_a_machine_without_a_gpu_is_refused_before_anything_is_installed(tmp_path):
    """--gpu installs CUDA builds: where no NVIDIA GPU is visible (no nvidia-smi on PATH, no /dev/nvidia0)
    it is one line, after the disk check and before the environment is touched."""
    if os.path.exists("/dev/nvidia0"):
        return  # a GPU machine: the check rightly passes (the refusal is what this CPU test is about)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "awk"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    _fake(tmp_path, "df", 'echo "Filesystem 1024-blocks Used Available"\necho "/dev/x 900000000 1000 800000000"\n')
    res = _run(["--gpu", "--no-flash", "--setup-only"], tmp_path, PATH=str(bin_dir), PYTHON=sys.executable)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == (
        "quickstart: error: --gpu: no NVIDIA GPU is visible here (no nvidia-smi, no /dev/nvidia0); on a CPU machine "
        "run it without --gpu"
    )


def test_a_missing_config_or_a_run_dir_without_value_is_one_line_before_anything_is_installed(tmp_path):
    res = _run([], tmp_path, CONFIG=str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == (
        f"quickstart: error: CONFIG={tmp_path / 'nope.yaml'}: no such file (the pipeline YAML; default "
        "examples/configs/demo_cpu.yaml)"
    )
    res = _run(["--", "--run_dir"], tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == "quickstart: error: --run_dir after -- needs a folder"
