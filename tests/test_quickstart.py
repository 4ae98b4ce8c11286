"""quickstart.sh's checks that come before any install: one clear line and exit 2 for an unknown option, a
Python older than 3.10 and a disk short of space. (The whole script runs in CI's vLLM leg, up to the
demo's first stage.)"""

from __future__ import annotations

import os
import subprocess
import sys

from tiny import REPO

SCRIPT = os.path.join(REPO, "quickstart.sh")


def _run(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    base.update(env)
    return subprocess.run(
        ["bash", SCRIPT, *args], capture_output=True, text=True, env=base, timeout=60, cwd=str(tmp_path)
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
