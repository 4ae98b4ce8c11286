"""Bad input, round three (issue 36): flags accepted but unused, truncated Arrow streams, name@data_dir
behind a path."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from openrlhf.config import ConfigError, load_config
from openrlhf.datasets.loading import load_rows
from openrlhf.utils.errors import DataError

from tiny import pref_rows, write_jsonl

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


def problems_of(argv, task):
    with pytest.raises(ConfigError) as info:
        load_config(argv, task, check_packages=False)
    return info.value.problems


@pytest.mark.parametrize("task", sorted(PREFERENCE_TASKS))
@pytest.mark.parametrize("key", ["input_key", "output_key"])
def test_preference_tasks_refuse_sft_keys(task, key):
    problems = problems_of(PREFERENCE_TASKS[task] + [f"--data.{key}", "question"], task)
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
    problems = problems_of(SFT_TASKS[task] + [f"--data.{key}", "question"], task)
    line = [p for p in problems if p.startswith(f"--data.{key}: is not used by train_")]
    assert len(line) == 1 and "--data.input_key (the prompt) / --data.output_key (the response)" in line[0], problems
    load_config(SFT_TASKS[task] + ["--data.input_key", "q", "--data.output_key", "a"], task, check_packages=False)


def test_unused_key_names_the_command():
    (line,) = [p for p in problems_of(MODEL + ["--data.input_key", "q"], "dpo") if "input_key" in p]
    assert line == (
        "--data.input_key: is not used by train_dpo: preference rows are read with --data.prompt_key / "
        "--data.chosen_key / --data.rejected_key"
    )


# ---- name@data_dir with a path in front ------------------------------------------------------------


def test_name_at_data_dir_behind_a_path(tmp_path, monkeypatch):
    rows = pref_rows(5)
    for sub, part in (("a", rows[:2]), ("b", rows[2:])):
        write_jsonl(str(tmp_path / "multi" / sub / "train.jsonl"), part)
    monkeypatch.chdir(tmp_path)
    # the same source from inside the folder, by a relative path and by an absolute one
    for source in ("multi@b", "./multi@b", str(tmp_path / "multi") + "@b"):
        cfg = load_config(["--model.model_name_or_path", "org/student", "--data.dataset", source], "dpo")
        assert load_rows(cfg.data.dataset) == rows[2:], source
    # a data_dir that is not there, or a folder that is not there, is named
    problems = problems_of(MODEL[:2] + ["--data.dataset", str(tmp_path / "multi") + "@c"], "dpo")
    assert f"--data.dataset: 'c' is not a folder in {tmp_path / 'multi'} (name@data_dir)" in problems, problems
    problems = problems_of(MODEL[:2] + ["--data.dataset", "./nothing@b"], "dpo")
    assert "--data.dataset: file or folder not found: ./nothing@b" in problems, problems


# ---- a truncated Arrow IPC stream ------------------------------------------------------------------


def _arrow_stream(rows):
    """The bytes of an Arrow IPC stream of one record batch per row, and the offset after each batch."""
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    ends = []
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
            ends.append(sink.tell())
    return sink.getvalue().to_pybytes(), ends


def test_truncated_arrow_stream_is_refused(tmp_path):
    rows = pref_rows(4)
    data, ends = _arrow_stream(rows)
    assert len(ends) == 4
    whole = tmp_path / "whole.arrow"
    whole.write_bytes(data)
    assert load_rows(str(whole)) == rows
    # cut after 2 of the 4 batches (a clean message boundary), and in the middle of the third
    for name, cut in (("cut.arrow", ends[1]), ("torn.arrow", ends[1] + (ends[2] - ends[1]) // 2)):
        path = tmp_path / name
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match="^" + re.escape(f"--data.dataset {path}: the Arrow stream is truncated")):
            load_rows(str(path))
    # the Arrow IPC file format (a footer instead of the end-of-stream marker) still loads
    table = pa.Table.from_pylist(rows)
    as_file = tmp_path / "file.arrow"
    with pa.OSFile(str(as_file), "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)
    assert load_rows(str(as_file)) == rows
