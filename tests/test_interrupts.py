"""Interruptions: Ctrl-C or SIGTERM in training, generate, score_logps and judge is one clean stop that the
same command resumes; a process killed in the middle of a write tears nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from openrlhf.utils.run_folder import LOCK_NAME

from tiny import (
    REPO,
    as_flags,
    base_flags,
    judge_files,
    launch_env,
    pref_rows,
    read_metrics,
    run_in_process,
    run_module,
    score_flags,
    sigint_default,
    write_jsonl,
)


@pytest.mark.main_leg
@pytest.mark.slow
def test_score_logps_killed_mid_write_then_resumed_loses_no_row(tiny_dir, tiny_teacher_other_family, tmp_path):
    """A real SIGKILL while score_logps appends, then the last line cut in half (a torn write): the
    resumed run repairs the line before appending and scores every row, equal to an uninterrupted run."""
    rows = pref_rows(8) * 6  # 48 pairs, one per micro-batch
    for i, r in enumerate(rows):
        r["prompt"] = f"{r['prompt']} ({i})"
    data = write_jsonl(str(tmp_path / "pairs.jsonl"), rows)
    flags = lambda out: score_flags(
        tiny_dir,
        data,
        out,
        "--teacher.model_name_or_path",  # noqa: E731
        tiny_teacher_other_family,
        "--train.micro_batch_size",
        "1",
    )
    full = [json.loads(x) for x in open(run_in_process("score_logps", flags(str(tmp_path / "full"))))]

    out = str(tmp_path / "killed")
    partial = os.path.join(out, ".score_partial", "teacher.rank0.jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrlhf.cli.score_logps", *flags(out)],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(partial) and len(open(partial).read().splitlines()) >= 5:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    text = open(partial).read()
    n_before = len(text.splitlines())
    assert 5 <= n_before < 48, "the run should have been killed part way"
    with open(partial, "w") as f:  # cut the last line in half, as a kill mid-write leaves it
        f.write(text.rstrip("\n")[:-10])

    res = run_module("openrlhf.cli.score_logps", flags(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "dropped the torn last line" in res.stdout + res.stderr
    resumed = [json.loads(x) for x in open(os.path.join(out, "train.jsonl"))]
    assert all(r["teacher_chosen_logp"] is not None for r in resumed)
    assert [r["teacher_chosen_logp"] for r in resumed] == pytest.approx(
        [r["teacher_chosen_logp"] for r in full], abs=1e-5
    )
    assert "scored 48 of 48 rows" in res.stdout


@pytest.mark.main_leg
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_during_training_is_a_clean_stop(tiny_dir, tmp_path, sig, code, word):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption) while training (a checkpoint every step): exit
    code 130 / 143, one line naming the last complete checkpoint, no temp folder and no lock left; the resumed
    run finishes."""
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(8))
    out = str(tmp_path / "o")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "train.batch_size": "2",
                "train.micro_batch_size": "1",
                "train.max_epochs": "8",
                "ckpt.save_steps": "1",
                "ckpt.load_enable": None,
            }
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "openrlhf.cli.train_dpo", *flags],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    metrics = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 3):
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(word)]
    assert len(lines) == 1 and "the last complete checkpoint is" in lines[0] and "--ckpt.load_enable" in lines[0]
    assert "Traceback" not in stderr
    ckpts = os.path.join(out, "checkpoints")
    assert [n for n in os.listdir(ckpts) if n.startswith(".")] == []
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # released: the next run needs no takeover
    assert lines[0].split("checkpoint is ")[1].split(";")[0] == os.path.join(
        ckpts, open(os.path.join(ckpts, "latest")).read()
    )
    done = len(read_metrics(out))
    res = run_module("openrlhf.cli.train_dpo", flags, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 33)) and done < 32


def _interrupt_when(cmd, ready, timeout=240):
    """Start ``cmd``, send SIGINT once ``ready()`` holds; (return code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    from tiny import REPO, launch_env, sigint_default

    proc = subprocess.Popen(
        [sys.executable, "-m", *cmd],
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def _lines(path):
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def _one_interrupted_line(rc, stderr, *parts):
    assert rc == 130, stderr[-3000:]
    # split on "\n" only: a message glued to a progress bar (its "\r" redraws) would not start a line
    lines = [x for x in stderr.split("\n") if "interrupted" in x]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), stderr[-3000:]
    assert "rerun the same command to resume" in lines[0] and all(p in lines[0] for p in parts), lines[0]
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.main_leg
def test_ctrl_c_in_score_logps_says_the_same_command_resumes(tiny_dir, tiny_teacher_other_family, tmp_path):
    rows = pref_rows(8) * 6
    for i, r in enumerate(rows):
        r["prompt"] = f"{r['prompt']} ({i})"
    data = write_jsonl(str(tmp_path / "pairs.jsonl"), rows)
    out = str(tmp_path / "scored")
    flags = score_flags(tiny_dir, data, out, "--teacher.model_name_or_path", tiny_teacher_other_family)
    partial = os.path.join(out, ".score_partial", "teacher.rank0.jsonl")
    rc, err = _interrupt_when(["openrlhf.cli.score_logps", *flags], lambda: _lines(partial) >= 3)
    _one_interrupted_line(rc, err, f"the pairs scored so far are kept in {os.path.join(out, '.score_partial')}")
    res = run_module("openrlhf.cli.score_logps", flags, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(open(os.path.join(out, "train.jsonl")).read().splitlines()) == 48


@pytest.mark.main_leg
def test_ctrl_c_in_generate_says_the_same_command_resumes(tiny_dir, tmp_path):
    prompts = write_jsonl(
        str(tmp_path / "prompts.jsonl"), [{"id": i, "prompt": f"Tell me about the number {i}."} for i in range(40)]
    )
    out = str(tmp_path / "gen.jsonl")
    flags = as_flags(
        {
            "model.model_name_or_path": tiny_dir,
            "data.dataset": prompts,
            "data.prompt_key": "prompt",
            "data.apply_chat_template": None,
            "generate.batch_size": "1",
            "generate.max_new_tokens": "24",
            "ds.param_dtype": "fp32",
            "generate.output_path": out,
        }
    )
    rc, err = _interrupt_when(["openrlhf.cli.generate", *flags], lambda: _lines(out) >= 2)
    line = _one_interrupted_line(rc, err, f"of 40 prompts are answered in {out}")
    done = int(line.split("interrupted: ")[1].split(" of ")[0])
    assert 2 <= done < 40 and _lines(out) == done


@pytest.mark.main_leg
def test_ctrl_c_in_judge_says_the_same_command_resumes_and_loses_no_verdict(tmp_path):
    pytest.importorskip("openai")
    import time

    from judge_server import FakeJudge

    teacher, cand = judge_files(tmp_path)
    more = write_jsonl(
        str(tmp_path / "more.jsonl"),
        [{"id": i, "prompt": f"Tell me a story {i}.", "response": "x" * i, "finish_reason": "stop"} for i in range(3)],
    )

    def slow(messages):
        time.sleep(0.4)
        return "OK" if "Say OK" in messages[-1]["content"] else "[[A]]"

    out = str(tmp_path / "j")
    cache = os.path.join(out, "judge_cache.jsonl")
    with FakeJudge(slow) as server:
        flags = [
            "--judge.base_url",
            server.url,
            "--judge.model",
            "fake-judge",
            "--judge.concurrency",
            "2",
            "--output_dir",
            out,
            "--task",
            "indomain",
            "--teacher_responses",
            teacher,
            "--candidate",
            f"long={cand}",
            "--candidate",
            f"more={more}",
        ]
        rc, err = _interrupt_when(["openrlhf.cli.judge", *flags], lambda: _lines(cache) >= 2)
        _one_interrupted_line(
            rc,
            err,
            f"every verdict received so far is kept in {cache}",
            "requests in flight at the interrupt are sent again",
        )
        kept = _lines(cache)
        assert 2 <= kept < 12
        res = run_module("openrlhf.cli.judge", flags, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
    keys = [json.loads(x)["key"] for x in open(cache)]
    assert len(keys) == len(set(keys)) == 12  # 2 models x 3 items x 2 orders: none lost, none twice
