"""On-policy daDPO / dDPO (--onpolicy.round_steps): the policy being trained answers the next rows' prompts
and its answers replace the rejected responses. Checked against answers computed here with plain
transformers from the same weights, the offline run, a resumed run, two ZeRO-3 processes, bad settings."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch

from openrlhf.config import ConfigError, load_config
from openrlhf.utils.errors import Interrupted

from tiny import (
    as_flags,
    base_flags,
    killed_at_micro_batch,
    pref_rows,
    read_metrics,
    run_deepspeed,
    train_losses,
    write_jsonl,
)
from tiny import run_in_process as run

NEW_TOKENS = 6


def greedy_answers(model_path: str, prompts, max_new_tokens: int = NEW_TOKENS):
    """(text, unfinished) of each prompt's greedy answer, one prompt at a time (no padding), from plain
    transformers: the chat template's generation prompt, stopped by EOS or the end-of-turn token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    stops = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)[0, ids.shape[1] :]
        gen = gen.tolist()
        cut = next((k for k, t in enumerate(gen) if t in stops), None)
        content = gen if cut is None else gen[:cut]
        out.append((tok.decode(content, skip_special_tokens=True), cut is None))
    return out


def flags(student, teacher, data, out, *extra):
    return base_flags(
        student,
        data,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": teacher,
                "train.batch_size": "4",
                "train.micro_batch_size": "2",
                "model.beta": "0.3",
                "teacher.beta": "0.7",
                "onpolicy.max_new_tokens": str(NEW_TOKENS),
                "onpolicy.batch_size": "1",
            }
        ),
        *extra,
    )


def rounds_of(out):
    """{round start step: [rows of its file(s)]}"""
    found = {}
    for path in sorted(glob.glob(os.path.join(out, "checkpoints", "onpolicy", "round*_rank*.jsonl"))):
        start = int(os.path.basename(path)[5:11])
        with open(path) as f:
            found.setdefault(start, []).extend(json.loads(line) for line in f)
    return found


@pytest.fixture()
def pref8(tmp_path):
    return write_jsonl(str(tmp_path / "pref8.jsonl"), pref_rows(8))


def test_one_round_from_the_initial_weights_is_the_offline_run_on_their_answers(
    tiny_dir, tiny_teacher_other_family, pref8, tmp_path
):
    """One round for the whole run (K = its 2 steps) answers every prompt from the initial weights before
    step 1: exactly the offline run whose rejected responses are those answers."""
    rows = pref_rows(8)
    answers = greedy_answers(tiny_dir, [r["prompt"] for r in rows])
    offline_rows = [
        dict(r, rejected=text, rejected_unfinished=unfinished)
        for r, (text, unfinished) in zip(rows, answers, strict=True)
    ]
    offline_data = write_jsonl(str(tmp_path / "offline.jsonl"), offline_rows)
    offline = str(tmp_path / "offline")
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, offline_data, offline))
    onpolicy = str(tmp_path / "onpolicy")
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, pref8, onpolicy, "--onpolicy.round_steps", "2"))

    assert len(train_losses(offline)) == 2
    assert train_losses(onpolicy) == train_losses(offline)
    ((start, written),) = rounds_of(onpolicy).items()
    assert start == 0 and len(written) == 8
    by_prompt = {r["prompt"]: (t, u) for r, (t, u) in zip(rows, answers, strict=True)}
    for r in written:
        assert (r["rejected"], r["rejected_unfinished"]) == by_prompt[r["prompt"]]
    first = read_metrics(onpolicy)[0]
    assert first["gen_seconds"] > 0 and read_metrics(onpolicy)[1]["gen_seconds"] == 0.0
    assert 0 <= first["gen_unfinished"] <= 1 and 0 < first["gen_response_tokens"] <= NEW_TOKENS


def test_each_round_answers_with_the_weights_of_that_step(tiny_dir, tiny_teacher_other_family, pref8, tmp_path):
    """K = 1: the answers of step 2's round come from the weights after step 1 (its saved HF folder), and
    differ from the round before: the policy moved."""
    out = str(tmp_path / "k1")
    run(
        "dadpo",
        flags(
            tiny_dir,
            tiny_teacher_other_family,
            pref8,
            out,
            *as_flags({"onpolicy.round_steps": "1", "ckpt.save_steps": "1", "ckpt.save_hf": None, "ckpt.max_num": "5"}),
        ),
    )
    rounds = rounds_of(out)
    assert sorted(rounds) == [0, 1]
    after_step1 = os.path.join(out, "checkpoints", "global_step1_hf")
    expected = greedy_answers(after_step1, [r["prompt"] for r in rounds[1]])
    assert [(r["rejected"], r["rejected_unfinished"]) for r in rounds[1]] == expected
    prompts = [r["prompt"] for r in rounds[1]]
    before = dict(zip(prompts, greedy_answers(tiny_dir, prompts), strict=True))
    assert any((r["rejected"], r["rejected_unfinished"]) != before[r["prompt"]] for r in rounds[1])
    assert all(m["gen_seconds"] > 0 for m in read_metrics(out))


def test_resume_inside_a_round_reproduces_the_uninterrupted_run(
    tiny_dir, tiny_teacher_other_family, tmp_path, monkeypatch
):
    """Sampled answers (temperature 1), K = 2 over 6 steps; killed in step 4 (the second step of the round
    from step 3), resumed from the step-3 checkpoint: the round's answers are read back, the next round is
    sampled as before, and every loss equals the uninterrupted run's."""
    data = write_jsonl(str(tmp_path / "pref24.jsonl"), pref_rows(24))
    common = (
        *as_flags(
            {
                "onpolicy.round_steps": "2",
                "onpolicy.temperature": "1.0",
                "ckpt.save_steps": "1",
                "ckpt.max_num": "1",
                "ckpt.load_enable": None,
            }
        ),
    )
    full = str(tmp_path / "full")
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, full, *common))
    expected = train_losses(full)
    assert len(expected) == 6

    crashed = str(tmp_path / "crashed")
    with killed_at_micro_batch(monkeypatch, 7), pytest.raises(Interrupted):  # 2 per step: step 4's first
        run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, crashed, *common))
    assert [r["step"] for r in read_metrics(crashed)] == [1, 2, 3]
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, crashed, *common))
    assert [r["step"] for r in read_metrics(crashed)] == list(range(1, 7))
    assert train_losses(crashed) == train_losses(full)
    assert read_metrics(crashed)[3]["gen_seconds"] == 0.0  # step 4: read back, not answered again
    assert rounds_of(crashed) == rounds_of(full)


def test_the_round_file_of_another_run_is_refused_on_resume(tiny_dir, tiny_teacher_other_family, tmp_path, monkeypatch):
    data = write_jsonl(str(tmp_path / "pref16.jsonl"), pref_rows(16))
    common = ("--onpolicy.round_steps", "4", "--ckpt.save_steps", "1", "--ckpt.load_enable")
    out = str(tmp_path / "run")
    with killed_at_micro_batch(monkeypatch, 3), pytest.raises(Interrupted):  # the first micro-batch of step 2
        run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, out, *common))
    path = os.path.join(out, "checkpoints", "onpolicy", "round000000_rank0.jsonl")
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    write_jsonl(path, rows[::-1])  # other rows in the round's place
    with pytest.raises(Exception, match="its answers are for other rows"):
        run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, out, *common))
    os.remove(path)
    with pytest.raises(Exception, match="file not found"):
        run("dadpo", flags(tiny_dir, tiny_teacher_other_family, data, out, *common))


def test_round_steps_zero_is_the_offline_run(tiny_dir, tiny_teacher_other_family, pref8, tmp_path):
    """The default (0) and an explicit 0 train on the file's rejected responses: no round, no generation."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, pref8, a))
    run("dadpo", flags(tiny_dir, tiny_teacher_other_family, pref8, b, "--onpolicy.round_steps", "0"))
    assert train_losses(a) == train_losses(b)
    assert not rounds_of(a) and "gen_seconds" not in read_metrics(a)[0]


def test_online_ddpo_takes_rounds_too(tiny_dir, pref8, tmp_path):
    """train_dpo with rounds: the reference scores the policy's answers; the run's answers are on file."""
    out = str(tmp_path / "ddpo")
    run(
        "dpo",
        base_flags(
            tiny_dir,
            pref8,
            out,
            "--train.batch_size",
            "4",
            "--onpolicy.round_steps",
            "1",
            "--onpolicy.max_new_tokens",
            str(NEW_TOKENS),
        ),
    )
    assert sorted(rounds_of(out)) == [0, 1]
    assert len(train_losses(out)) == 2


@pytest.mark.parametrize(
    "extra, match",
    [
        (("--onpolicy.round_steps", "-1"), "--onpolicy.round_steps: must be >= 0"),
        (("--onpolicy.round_steps", "1", "--data.dataloader_num_workers", "2"), "--data.dataloader_num_workers"),
        (("--onpolicy.top_p", "0"), "--onpolicy.top_p"),
        (("--onpolicy.max_new_tokens", "0"), "--onpolicy.max_new_tokens"),
        (("--vllm.enforce_eager",), "--vllm.enforce_eager: set, but no vLLM engine runs"),
        (
            ("--onpolicy.round_steps", "1", "--onpolicy.backend", "vllm", "--vllm.num_engines", "2"),
            "--vllm.num_engines: on-policy rounds run one vLLM engine",
        ),
        (("--onpolicy.backend", "ray"), "--onpolicy.backend: expected hf or vllm"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_config(["--model.model_name_or_path", "m", "--data.dataset", "d.jsonl", *extra], task="dadpo")


def test_vllm_backend_without_vllm_is_refused(monkeypatch):
    from openrlhf.utils import errors

    monkeypatch.setattr(errors, "has_package", lambda module: module != "vllm")
    flags_ = ["--model.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--onpolicy.round_steps", "1"]
    with pytest.raises(ConfigError, match="--onpolicy.backend: .*needs the vllm package"):
        load_config([*flags_, "--onpolicy.backend", "vllm"], task="dadpo")


def test_ray_trainers_refuse_rounds():
    with pytest.raises(ConfigError, match="--onpolicy.round_steps: on-policy rounds run in train_dpo / train_dadpo"):
        load_config(
            ["--model.model_name_or_path", "m", "--data.dataset", "d.jsonl", "--onpolicy.round_steps", "2"],
            task="dadpo_ray",
        )


def test_cached_log_probs_of_the_rejected_side_are_refused(tiny_dir, tiny_teacher_other_family, pref8, tmp_path):
    """Cached columns score the file's rejected responses, which the rounds replace: refused, naming them,
    before any model is loaded."""
    from tiny import score_flags

    scored = str(tmp_path / "scored")
    run("score_logps", score_flags(tiny_dir, pref8, scored, "--teacher.model_name_or_path", tiny_teacher_other_family))
    out = str(tmp_path / "t")
    with pytest.raises(Exception, match=r"--onpolicy.round_steps 1: .*teacher \(cached columns\)"):
        run("dadpo", flags(tiny_dir, tiny_teacher_other_family, scored, out, "--onpolicy.round_steps", "1"))
    assert not os.path.exists(out)


@pytest.mark.main_leg
@pytest.mark.slow
def test_two_processes_zero3_answer_and_train_as_one(tiny_dir, tiny_teacher_other_family, tmp_path):
    """ZeRO-3 over two processes: each answers its own rows of a round (generating together: the
    parameters are gathered collectively), and the run trains as one process does on the same rows."""
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    runs = {}
    for n in (1, 2):
        out = str(tmp_path / f"p{n}")
        f = flags(tiny_dir, tiny_teacher_other_family, data, out, "--onpolicy.round_steps", "2")
        f[f.index("--ds.zero_stage") + 1] = "3"
        f[f.index("--train.micro_batch_size") + 1] = "1"
        if n == 2:
            run_deepspeed("openrlhf.cli.train_dadpo", f)
        else:
            run("dadpo", f)
        runs[n] = out
    assert len(train_losses(runs[1])) == 4
    assert train_losses(runs[2]) == pytest.approx(train_losses(runs[1]), abs=1e-4)
    one, two = rounds_of(runs[1]), rounds_of(runs[2])
    assert sorted(one) == sorted(two) == [0, 2]
    for start in one:
        assert sorted((r["index"], r["rejected"]) for r in two[start]) == sorted(
            (r["index"], r["rejected"]) for r in one[start]
        )
    files = glob.glob(os.path.join(runs[2], "checkpoints", "onpolicy", "*.jsonl"))
    assert sorted(os.path.basename(p) for p in files) == [
        "round000000_rank0.jsonl",
        "round000000_rank1.jsonl",
        "round000002_rank0.jsonl",
        "round000002_rank1.jsonl",
    ]


def test_bf16_rounds_train_as_offline_on_the_same_answers(tiny_dir, tiny_teacher_other_family, pref8, tmp_path):
    """bf16 (the default dtype): the answers the policy gave in its round, written to a file as an offline
    preference set, train the same losses, bit for bit."""

    def with_bf16(f):
        f[f.index("--ds.param_dtype") + 1] = "bf16"
        return f

    onpolicy = str(tmp_path / "onpolicy")
    run("dadpo", with_bf16(flags(tiny_dir, tiny_teacher_other_family, pref8, onpolicy, "--onpolicy.round_steps", "2")))
    (answers,) = rounds_of(onpolicy).values()
    by_index = {r["index"]: r for r in answers}
    rows = [
        dict(r, rejected=by_index[i]["rejected"], rejected_unfinished=by_index[i]["rejected_unfinished"])
        for i, r in enumerate(pref_rows(8))
    ]
    offline = str(tmp_path / "offline")
    data = write_jsonl(str(tmp_path / "answers.jsonl"), rows)
    run("dadpo", with_bf16(flags(tiny_dir, tiny_teacher_other_family, data, offline)))
    assert train_losses(onpolicy) == train_losses(offline)


@pytest.mark.vllm
def test_vllm_engine_answers_with_the_pushed_weights_of_each_step(
    smollm2_dir, tiny_teacher_other_family, pref8, tmp_path
):
    """--onpolicy.backend vllm: one vLLM engine, started once from the policy's folder; before the round of
    step 2 it gets the weights after step 1 (no restart) and answers as plain transformers does with them."""
    out = str(tmp_path / "vllm")
    f = flags(
        smollm2_dir,
        tiny_teacher_other_family,
        pref8,
        out,
        *as_flags(
            {
                "onpolicy.round_steps": "1",
                "onpolicy.backend": "vllm",
                "onpolicy.batch_size": "8",
                "vllm.gpu_memory_utilization": "0.1",
                "vllm.enforce_eager": None,
                "vllm.max_model_len": "1024",
                "ckpt.save_steps": "1",
                "ckpt.save_hf": None,
                "ckpt.max_num": "5",
            }
        ),
    )
    f[f.index("--adam.lr") + 1] = "1e-3"
    import vllm

    starts = []
    real = vllm.LLM

    class CountingLLM(real):
        def __init__(self, *a, **k):
            starts.append(k["model"])
            super().__init__(*a, **k)

    vllm.LLM = CountingLLM
    try:
        run("dadpo", f)
    finally:
        vllm.LLM = real
    assert starts == [smollm2_dir]  # one engine for both rounds
    first, second = read_metrics(out)
    assert first["gen_engine_start_seconds"] > 0 and "gen_engine_start_seconds" not in second
    rounds = rounds_of(out)
    assert sorted(rounds) == [0, 1]
    for start, weights in ((0, smollm2_dir), (1, os.path.join(out, "checkpoints", "global_step1_hf"))):
        prompts = [r["prompt"] for r in rounds[start]]
        assert [(r["rejected"], r["rejected_unfinished"]) for r in rounds[start]] == greedy_answers(weights, prompts)
    before = greedy_answers(smollm2_dir, [r["prompt"] for r in rounds[1]])
    assert [(r["rejected"], r["rejected_unfinished"]) for r in rounds[1]] != before  # the weights were pushed
