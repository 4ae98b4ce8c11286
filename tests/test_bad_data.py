"""Bad data found before training: blank responses dropped and counted, prompts with wrong roles, ids of
other types, keys a task does not take."""

from __future__ import annotations

import pytest

from openrlhf.config import load_config
from openrlhf.utils.errors import DataError

from tiny import (
    as_flags,
    config_problems,
    dadpo_flags,
    pref_rows,
    run_in_process,
    run_module,
    sft_rows,
    write_jsonl,
)


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
        run_in_process("dadpo", dadpo_flags(tiny_dir, tiny_dir, data, str(tmp_path / "o")))
    from openrlhf.recipes.generate import generate

    with pytest.raises(DataError, match=message):
        generate(
            load_config(
                as_flags(
                    {
                        "model.model_name_or_path": tiny_dir,
                        "data.dataset": data,
                        "data.apply_chat_template": None,
                        "generate.output_path": str(tmp_path / "g.jsonl"),
                    }
                ),
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


MODEL = ["--model.model_name_or_path", "org/student", "--data.dataset", "org/data"]
TEACHER = ["--teacher.model_name_or_path", "org/teacher"]


# Each task with the least it needs, beside the keys it never reads.
PREFERENCE_TASKS = {
    "dpo": MODEL,
    "dadpo": MODEL + TEACHER,
    "kto": MODEL,
    "dpo_ray": MODEL,
    "dadpo_ray": MODEL + TEACHER,
    "score_logps": MODEL + TEACHER,
}


SFT_TASKS = {"sft": MODEL, "kd": MODEL + TEACHER}


@pytest.mark.parametrize("task", sorted(PREFERENCE_TASKS))
@pytest.mark.parametrize("key", ["input_key", "output_key"])
def test_preference_tasks_refuse_sft_keys(task, key):
    problems = config_problems(PREFERENCE_TASKS[task] + [f"--data.{key}", "question"], task)
    line = [p for p in problems if p.startswith(f"--data.{key}: is not used by ")]
    assert len(line) == 1 and "read with --data.prompt_key / --data.chosen_key / --data.rejected_key" in line[0], (
        problems
    )
    # the keys it reads, and the unused ones at their defaults, pass
    load_config(
        PREFERENCE_TASKS[task] + ["--data.prompt_key", "q", "--data.chosen_key", "a"], task, check_packages=False
    )


@pytest.mark.parametrize("task", sorted(SFT_TASKS))
@pytest.mark.parametrize("key", ["prompt_key", "chosen_key", "rejected_key"])
def test_sft_tasks_refuse_preference_keys(task, key):
    problems = config_problems(SFT_TASKS[task] + [f"--data.{key}", "question"], task)
    line = [p for p in problems if p.startswith(f"--data.{key}: is not used by train_")]
    assert len(line) == 1 and "--data.input_key (the prompt) / --data.output_key (the response)" in line[0], problems
    load_config(SFT_TASKS[task] + ["--data.input_key", "q", "--data.output_key", "a"], task, check_packages=False)


def test_unused_key_names_the_command():
    (line,) = [p for p in config_problems(MODEL + ["--data.input_key", "q"], "dpo") if "input_key" in p]
    assert line == (
        "--data.input_key: is not used by train_dpo: preference rows are read with --data.prompt_key / "
        "--data.chosen_key / --data.rejected_key"
    )
