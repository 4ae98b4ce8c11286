"""One run per output folder (openrlhf/utils/run_folder.py): a folder holding a previous run is refused
unless resumed or overwritten, a live run's lock refuses a second run naming its PID and host, a stale
lock (its process gone) is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from openrlhf.config import load_config
from openrlhf.config.parse import ConfigError
from openrlhf.utils.errors import UserError
from openrlhf.utils.run_folder import LOCK_NAME, check_folder, claim, lock_output_file, take_lock

from tiny import base_flags, pref_rows, read_metrics, run_in_process, score_flags, sft_rows, write_jsonl


@pytest.fixture()
def live_pid():
    """The PID of another live process (a `sleep`), ended after the test."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(path: str, pid: int, host: str = "") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"pid": pid, "host": host or socket.gethostname(), "started": 0, "command": "train_sft x"}, f)


# ---- the module ------------------------------------------------------------------------------


def test_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    args = dict(what="--ckpt.output_dir", marker_files=("metrics.jsonl",), resume_flag="--r", overwrite_flag="--o")
    check_folder(folder, resume=False, overwrite=False, **args)  # empty: fine
    (tmp_path / "run" / "notes.txt").write_text("x")
    check_folder(folder, resume=False, overwrite=False, **args)  # not a run's file: fine
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(UserError) as e:
        check_folder(folder, resume=False, overwrite=False, **args)
    msg = str(e.value)
    assert folder in msg and "--r" in msg and "--o" in msg and "metrics.jsonl" in msg and "\n" not in msg
    check_folder(folder, resume=True, overwrite=False, **args)
    check_folder(folder, resume=False, overwrite=True, **args)


def test_lock_is_exclusive_and_released(tmp_path):
    folder = str(tmp_path / "run")
    lock = take_lock(folder, what="--ckpt.output_dir")
    path = os.path.join(folder, LOCK_NAME)
    record = json.load(open(path))
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    lock.release()
    assert not os.path.exists(folder)  # the lock made the folder and nothing was written: removed with it
    lock.release()  # twice: fine
    os.makedirs(folder)
    with take_lock(folder, what="--ckpt.output_dir"):
        assert os.path.exists(path)
    assert not os.path.exists(path) and os.path.isdir(folder)  # a folder the user made stays
    with take_lock(str(tmp_path / "new"), what="--ckpt.output_dir"):
        open(tmp_path / "new" / "metrics.jsonl", "w").close()
    assert os.listdir(tmp_path / "new") == ["metrics.jsonl"]  # a folder the run wrote into stays


def test_live_lock_of_another_process_is_refused_naming_pid_and_host(tmp_path, live_pid):
    folder = str(tmp_path / "run")
    write_lock(os.path.join(folder, LOCK_NAME), live_pid)
    with pytest.raises(UserError, match=rf"PID {live_pid} on host {socket.gethostname()}"):
        take_lock(folder, what="--ckpt.output_dir")
    assert json.load(open(os.path.join(folder, LOCK_NAME)))["pid"] == live_pid  # left alone


def test_lock_of_another_host_is_refused_with_the_file_to_delete(tmp_path):
    folder = str(tmp_path / "run")
    write_lock(os.path.join(folder, LOCK_NAME), 1, host="elsewhere-node-7")
    with pytest.raises(UserError, match=r"PID 1 on host elsewhere-node-7.*delete .*\.openrlhf\.lock"):
        take_lock(folder, what="--ckpt.output_dir")


def test_stale_lock_is_taken_over_with_one_line(tmp_path):
    folder = str(tmp_path / "run")
    pid = dead_pid()
    write_lock(os.path.join(folder, LOCK_NAME), pid)
    said = []
    lock = take_lock(folder, what="--ckpt.output_dir", log=said.append)
    assert json.load(open(os.path.join(folder, LOCK_NAME)))["pid"] == os.getpid()
    assert len(said) == 1 and f"PID {pid}" in said[0]
    lock.release()


def test_overwrite_clears_what_the_new_run_would_append_to(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (folder / "keep.txt").write_text("x")
    args = dict(what="--ckpt.output_dir", marker_files=("metrics.jsonl", "checkpoints"))
    with pytest.raises(UserError):
        claim(str(folder), **args, clear=("metrics.jsonl", "checkpoints"))
    with claim(str(folder), **args, overwrite=True, clear=("metrics.jsonl", "checkpoints"), log=lambda _: None):
        assert sorted(os.listdir(folder)) == [LOCK_NAME, "keep.txt"]


def test_output_file_lock(tmp_path, live_pid):
    out = str(tmp_path / "gens" / "teacher.jsonl")
    with lock_output_file(out, what="--generate.output_path"):
        other = tmp_path / "gens" / "student.jsonl"
        with lock_output_file(str(other), what="--generate.output_path"):  # another file of the folder: fine
            pass
    write_lock(str(tmp_path / "gens" / ".teacher.jsonl.lock"), live_pid)
    with pytest.raises(UserError, match=rf"teacher.jsonl.*PID {live_pid}"):
        lock_output_file(out, what="--generate.output_path")


def test_overwrite_and_load_enable_together_is_a_config_problem(tmp_path):
    with pytest.raises(ConfigError, match="ckpt.overwrite"):
        load_config(["--ckpt.output_dir", str(tmp_path), "--ckpt.overwrite", "--ckpt.load_enable"], task="sft")


# ---- end to end: train_sft and generate ------------------------------------------------------------------


def test_train_sft_refuses_a_finished_run_resumes_overwrites_and_locks(tiny_dir, tmp_path, live_pid):
    data = write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(4))
    out = str(tmp_path / "sft")
    flags = base_flags(tiny_dir, data, out, "--train.batch_size", "2", "--train.max_epochs", "1")
    run_in_process("sft", flags)
    first = read_metrics(out)
    assert first and not os.path.exists(os.path.join(out, LOCK_NAME))  # released at the end

    # The same command again: refused before any model loads, the finished run untouched.
    with pytest.raises(UserError) as e:
        run_in_process("sft", flags)
    msg = str(e.value)
    assert out in msg and "--ckpt.load_enable" in msg and "--ckpt.overwrite" in msg
    assert read_metrics(out) == first

    # A live run holds the folder: refused naming its PID and host, even with --ckpt.overwrite.
    write_lock(os.path.join(out, LOCK_NAME), live_pid)
    with pytest.raises(UserError, match=rf"PID {live_pid} on host {socket.gethostname()}"):
        run_in_process("sft", flags + ["--ckpt.overwrite"])
    assert read_metrics(out) == first

    # That run was killed (its PID gone): the stale lock is taken over; --ckpt.overwrite starts afresh.
    write_lock(os.path.join(out, LOCK_NAME), dead_pid())
    run_in_process("sft", flags + ["--ckpt.overwrite"])
    assert len(read_metrics(out)) == len(first)  # one run's records, not two runs' interleaved
    assert not os.path.exists(os.path.join(out, LOCK_NAME))

    # --ckpt.load_enable: the folder's run is resumed, not refused.
    run_in_process("sft", flags + ["--ckpt.load_enable"])


def test_generate_refuses_an_output_file_another_run_writes(tiny_dir, tmp_path, live_pid):
    prompts = write_jsonl(str(tmp_path / "prompts.jsonl"), [{"prompt": "hi"}])
    out = str(tmp_path / "gens" / "answers.jsonl")
    write_lock(str(tmp_path / "gens" / ".answers.jsonl.lock"), live_pid)
    flags = ["--model.model_name_or_path", tiny_dir, "--data.dataset", prompts, "--generate.output_path", out]
    flags += ["--data.prompt_key", "prompt", "--generate.backend", "hf", "--generate.max_new_tokens", "2"]
    with pytest.raises(UserError, match=rf"PID {live_pid} on host"):
        run_in_process("generate", flags)
    assert not os.path.exists(out)


def test_score_logps_refuses_a_folder_another_run_scores_into(tiny_dir, tmp_path, live_pid):
    data = write_jsonl(str(tmp_path / "pref.jsonl"), pref_rows(2))
    out = str(tmp_path / "scored")
    write_lock(os.path.join(out, LOCK_NAME), live_pid)
    with pytest.raises(UserError, match=rf"PID {live_pid} on host"):
        run_in_process("score_logps", score_flags(tiny_dir, data, out, "--ref.model_name_or_path", tiny_dir))
    assert not os.path.exists(os.path.join(out, "train.jsonl"))


def test_judge_refuses_an_output_dir_another_judge_writes(tmp_path, live_pid):
    rows = [
        {"id": i, "prompt": f"Tell me a story {i}.", "response": "answer", "finish_reason": "stop"} for i in range(2)
    ]
    teacher = write_jsonl(str(tmp_path / "teacher.jsonl"), rows)
    student = write_jsonl(str(tmp_path / "student.jsonl"), rows)
    out = str(tmp_path / "report")
    write_lock(os.path.join(out, LOCK_NAME), live_pid)
    flags = ["--judge.base_url", "http://127.0.0.1:9/v1", "--judge.model", "m", "--output_dir", out]
    flags += ["--task", "indomain", "--teacher_responses", teacher, "--candidate", f"s={student}"]
    with pytest.raises(UserError, match=rf"PID {live_pid} on host"):
        run_in_process("judge", flags)
    assert os.listdir(out) == [LOCK_NAME]
