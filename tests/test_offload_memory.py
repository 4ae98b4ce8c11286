"""--ref.offload / --teacher.offload at ZeRO 0-2: every process keeps a full copy of the frozen model in CPU
memory, so a node's processes need that many copies; what does not fit the node's available memory is
refused with the numbers before the model loads (utils/deepspeed/offload.py, recipes/common.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from openrlhf.utils.deepspeed import offload
from openrlhf.utils.deepspeed.offload import GIB, host_copies_problem, nodes_problem, read_meminfo
from openrlhf.utils.errors import UserError

from tiny import REPO, free_port, launch_env, pref_rows, score_flags, write_jsonl


def test_copies_of_every_local_process_against_the_available_memory():
    # the case: a 7B model in bf16 (~14 GB) in each of 8 processes
    problem = host_copies_problem("--teacher.offload", 15 * 10**9, 8, 100 * GIB, 128 * GIB)
    assert problem == (
        "--teacher.offload at --ds.zero_stage 0-2 keeps a full copy of the model in CPU memory (pinned on a GPU "
        "machine) in each process: 14.0 GiB x 8 processes on this node = 111.8 GiB, more than its 100.0 GiB "
        "available (MemAvailable; MemTotal 128.0 GiB); use --ds.zero_stage 3 with --teacher.offload (the "
        "processes then hold one copy between them, each its shard), or leave --teacher.offload off (each GPU "
        "then holds the model)"
    )
    assert host_copies_problem("--teacher.offload", 15 * 10**9, 6, 100 * GIB, 128 * GIB) is None  # 83.8 GiB
    assert host_copies_problem("--ref.offload", 10, 4, 40, 64) is None  # exactly full still fits
    assert host_copies_problem("--ref.offload", 10, 4, 39, 64).startswith("--ref.offload at --ds.zero_stage 0-2")


def test_each_node_counts_its_own_processes_and_its_least_memory():
    a, b = ("node-a", 64 * GIB, 40 * GIB), ("node-b", 64 * GIB, 50 * GIB)
    ten = 10 * GIB
    assert nodes_problem("--ref.offload", ten, [a, a, a, a, b, b, b, b]) is None  # 4 x 10 GiB on each node
    assert nodes_problem("--ref.offload", ten, [a, b, b, b, b, b]) is None  # node-b: 5 x 10 GiB = its 50 GiB
    # one of node-b's processes read less: the node's least reading counts
    problem = nodes_problem("--ref.offload", ten, [a, b, ("node-b", 64 * GIB, 45 * GIB), b, b, b])
    assert "10.0 GiB x 5 processes on node-b = 50.0 GiB, more than its 45.0 GiB available" in problem
    assert "x 5 processes on node-a = 50.0 GiB, more than its 40.0 GiB" in nodes_problem("--ref.offload", ten, [a] * 5)


def test_meminfo_is_read_in_bytes(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       131072000 kB\nMemFree:         1000 kB\nMemAvailable:   65536000 kB\n")
    assert read_meminfo(str(path)) == (131072000 * 1024, 65536000 * 1024)
    total, available = read_meminfo()
    assert 0 < available <= total


def test_the_size_estimate_is_what_the_frozen_copy_holds(tiny_dir):
    from transformers import AutoModelForCausalLM

    from openrlhf.recipes.common import frozen_model_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    assert frozen_model_bytes(tiny_dir, torch.float32, "--ref.model_name_or_path") == held
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert frozen_model_bytes(tiny_dir, torch.bfloat16, "--ref.model_name_or_path") == 2 * params + buffers
    with pytest.raises(UserError, match="--teacher.model_name_or_path: cannot read the model config of"):
        frozen_model_bytes(os.path.join(tiny_dir, "nothing"), torch.float32, "--teacher.model_name_or_path")


def _no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_score_logps_refuses_an_offload_that_does_not_fit_before_loading(tiny_dir, tmp_path, monkeypatch):
    """The wiring: score_logps (as every recipe, through prepare_frozen) asks before the teacher loads."""
    from openrlhf.config import load_config
    from openrlhf.models.actor import Actor
    from openrlhf.recipes.common import frozen_model_bytes
    from openrlhf.recipes.score import score_logps

    need = frozen_model_bytes(tiny_dir, torch.float32, "--teacher.model_name_or_path")
    monkeypatch.setattr(offload, "read_meminfo", lambda: (4 * need, need - 1))
    monkeypatch.setattr(Actor, "from_pretrained", _no_loading)
    data = write_jsonl(str(tmp_path / "pairs.jsonl"), pref_rows(2))
    flags = score_flags(tiny_dir, data, str(tmp_path / "out"), "--teacher.model_name_or_path", tiny_dir)
    with pytest.raises(UserError) as info:
        score_logps(load_config(flags + ["--teacher.offload"], task="score_logps"))
    message = str(info.value)
    assert message.startswith("--teacher.offload at --ds.zero_stage 0-2 keeps a full copy")
    assert f"x 1 processes on {socket.gethostname()}" in message and "use --ds.zero_stage 3" in message
    assert message.endswith(f"(--teacher.model_name_or_path {tiny_dir})")


def test_only_an_offload_at_zero_0_to_2_asks(tiny_dir, monkeypatch):
    from openrlhf.config import load_config
    from openrlhf.recipes.common import frozen_model_bytes, prepare_frozen
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    need = frozen_model_bytes(tiny_dir, torch.float32, "--ref.model_name_or_path")
    asked = []
    monkeypatch.setattr(offload, "read_meminfo", lambda: asked.append(1) or (4 * need, need))
    flags = ["--model.model_name_or_path", tiny_dir, "--data.dataset", "x.jsonl", "--ds.param_dtype", "fp32"]
    cfg = load_config(flags, task="dpo", check_paths=False)
    strategy = DeepspeedStrategy(cfg.ds, cfg.train, training=False)
    model = prepare_frozen(strategy, cfg, tiny_dir, offload=False, what="--ref.model_name_or_path")
    assert asked == [] and not any(p.requires_grad for p in model.parameters())
    model = prepare_frozen(strategy, cfg, tiny_dir, offload=True, what="--ref.model_name_or_path")  # it fits
    assert asked == [1] and not any(p.requires_grad for p in model.parameters())


@pytest.mark.main_leg
def test_two_processes_of_one_node_count_two_copies_and_agree(tmp_path):
    """torchrun, 2 CPU processes: the readings are gathered, so both count 2 copies and give the same answer;
    0.6 of the available memory fits one process and not two (a fixed meminfo file: the machine's own
    MemAvailable moves with whatever else runs)."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16777216 kB\nMemFree:         1048576 kB\nMemAvailable:   10485760 kB\n")
    available = 10485760 * 1024
    fits_one = int(0.6 * available)
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        port,
        os.path.join(REPO, "tests", "scripts", "offload_memory_check.py"),
        "--out",
        str(tmp_path),
        "--model_bytes",
        "1",
        str(fits_one),
        "--meminfo",
        str(meminfo),
    ]
    res = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    answers = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert answers[0] == answers[1]
    small, large = answers[0]
    assert small is None
    assert f"x 2 processes on {socket.gethostname()}" in large
