"""daDPO end to end: a teacher of another family, online and cached log-probs, limits, bad input."""

from __future__ import annotations

import json
import os

import pytest
import torch

from openrlhf.config import ConfigError, load_config

from tiny import (
    as_flags,
    base_flags,
    direct_logps,
    pref_rows,
    read_metrics,
    run_deepspeed,
    score_flags,
    train_losses,
    write_jsonl,
)
from tiny import run_in_process as run


def one_step_flags(student, ref, teacher, data, out, *extra):
    # One optimizer step over all 8 pairs: the logged means are over the whole file.
    return base_flags(
        student,
        data,
        out,
        *as_flags(
            {
                "ref.model_name_or_path": ref,
                "teacher.model_name_or_path": teacher,
                "train.batch_size": "8",
                "train.micro_batch_size": "4",
                "model.beta": "0.3",
                "teacher.beta": "0.7",
            }
        ),
        *extra,
    )


@pytest.fixture()
def pref8(tmp_path):
    return write_jsonl(str(tmp_path / "pref8.jsonl"), pref_rows(8))


def test_first_loss_equals_eq10_from_plain_transformers(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path
):
    from transformers import AutoTokenizer

    s_tok, t_tok = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_teacher_other_family)
    assert len(s_tok) != len(t_tok) and s_tok.chat_template != t_tok.chat_template
    out = str(tmp_path / "dadpo")
    run("dadpo", one_step_flags(tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, out))
    first = read_metrics(out)[0]
    rows = pref_rows(8)
    pc, pr = direct_logps(tiny_dir, rows)
    rc, rr = direct_logps(tiny_teacher_same_vocab, rows)
    tc, tr = direct_logps(tiny_teacher_other_family, rows)
    z = 0.3 * ((pc - rc) - (pr - rr)) + 0.7 * ((pc - tc) - (pr - tr))
    assert first["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(z).mean().item(), abs=1e-5)
    # The logged teacher rewards are beta2 * (log pi - log te) with te from the teacher's own rendering.
    assert first["teacher_chosen_reward"] == pytest.approx((0.7 * (pc - tc)).mean().item(), abs=1e-4)
    assert first["teacher_reject_reward"] == pytest.approx((0.7 * (pr - tr)).mean().item(), abs=1e-4)
    assert first["chosen_reward"] == pytest.approx((0.3 * (pc - rc)).mean().item(), abs=1e-4)
    for key in (
        "step",
        "loss",
        "acc",
        "chosen_reward",
        "reject_reward",
        "teacher_chosen_reward",
        "teacher_reject_reward",
        "margin",
        "lr",
        "grad_norm",
    ):
        assert key in first


def test_teacher_beta_zero_gives_the_dpo_run(tiny_dir, tiny_teacher_other_family, pref8, tmp_path):
    common = as_flags(
        {"train.batch_size": "4", "train.micro_batch_size": "2", "train.max_epochs": "2", "model.beta": "0.5"}
    )
    run("dpo", base_flags(tiny_dir, pref8, str(tmp_path / "dpo"), *common))
    run(
        "dadpo",
        base_flags(
            tiny_dir,
            pref8,
            str(tmp_path / "dadpo"),
            *common,
            "--teacher.model_name_or_path",
            tiny_teacher_other_family,
            "--teacher.beta",
            "0",
        ),
    )
    assert train_losses(str(tmp_path / "dadpo")) == train_losses(str(tmp_path / "dpo"))


def _record_loads(monkeypatch):
    from openrlhf.models.actor import Actor

    loaded = []
    original = Actor.from_pretrained.__func__

    def recording(cls, path, **kw):
        loaded.append(os.path.realpath(path))
        return original(cls, path, **kw)

    monkeypatch.setattr(Actor, "from_pretrained", classmethod(recording))
    return loaded


def test_beta_zero_loads_no_reference(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path, monkeypatch
):
    loaded = _record_loads(monkeypatch)
    flags = one_step_flags(tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, str(tmp_path / "o"))
    flags[flags.index("--model.beta") + 1] = "0"
    run("dadpo", flags)
    assert os.path.realpath(tiny_teacher_same_vocab) not in loaded
    assert loaded == [os.path.realpath(tiny_dir), os.path.realpath(tiny_teacher_other_family)]
    assert read_metrics(str(tmp_path / "o"))[0]["chosen_reward"] == 0.0


def test_cached_logps_equal_online_and_skip_the_models(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path, monkeypatch
):
    online = str(tmp_path / "online")
    run("dadpo", one_step_flags(tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, online))

    scored_dir = str(tmp_path / "scored")
    path = run(
        "score_logps",
        score_flags(
            tiny_dir,
            pref8,
            scored_dir,
            "--ref.model_name_or_path",
            tiny_teacher_same_vocab,
            "--teacher.model_name_or_path",
            tiny_teacher_other_family,
            "--train.micro_batch_size",
            "3",
        ),
    )
    rows = [json.loads(x) for x in open(path)]
    assert len(rows) == 8
    for key in (
        "teacher_chosen_logp",
        "teacher_rejected_logp",
        "teacher_logp_fingerprint",
        "ref_chosen_logp",
        "ref_rejected_logp",
        "ref_logp_fingerprint",
        "prompt",
        "chosen",
        "rejected",
    ):
        assert key in rows[0]
    tc, _ = direct_logps(tiny_teacher_other_family, pref_rows(8))
    assert [r["teacher_chosen_logp"] for r in rows] == pytest.approx(tc.tolist(), abs=1e-4)

    loaded = _record_loads(monkeypatch)
    cached = str(tmp_path / "cached")
    run("dadpo", one_step_flags(tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, scored_dir, cached))
    assert loaded == [os.path.realpath(tiny_dir)]  # neither teacher nor reference was constructed
    assert read_metrics(cached)[0]["loss"] == pytest.approx(read_metrics(online)[0]["loss"], abs=1e-5)
    assert train_losses(cached) == pytest.approx(train_losses(online), abs=1e-5)


def test_cache_fingerprint_mismatch_is_a_clear_error(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path
):
    from openrlhf.datasets.loading import DataError

    scored_dir = str(tmp_path / "scored")
    path = run(
        "score_logps",
        score_flags(tiny_dir, pref8, scored_dir, "--teacher.model_name_or_path", tiny_teacher_other_family),
    )
    # Another teacher than the one that was scored.
    with pytest.raises(DataError, match=r"cached teacher log-probs do not belong.*--teacher.model_name_or_path"):
        run("dadpo", one_step_flags(tiny_dir, tiny_dir, tiny_teacher_same_vocab, scored_dir, str(tmp_path / "a")))
    # A row edited after scoring.
    rows = [json.loads(x) for x in open(path)]
    rows[2]["chosen"] = "An edited answer."
    edited = write_jsonl(str(tmp_path / "edited.jsonl"), rows)
    with pytest.raises(DataError, match=r"row 3: teacher_logp_fingerprint does not match"):
        run("dadpo", one_step_flags(tiny_dir, tiny_dir, tiny_teacher_other_family, edited, str(tmp_path / "b")))


def test_score_logps_resumes_from_partial_results(tiny_dir, tiny_teacher_other_family, pref8, tmp_path, monkeypatch):
    from openrlhf.logps import score as sl  # score_pairs collates there

    flags = lambda out: score_flags(
        tiny_dir,
        pref8,
        out,
        "--teacher.model_name_or_path",  # noqa: E731
        tiny_teacher_other_family,
        "--train.micro_batch_size",
        "2",
    )
    full = [json.loads(x) for x in open(run("score_logps", flags(str(tmp_path / "full"))))]
    # Kill during the third micro-batch: the partial file holds the first 4 rows.
    real = sl.preference_collate
    calls = {"n": 0}

    def dying(items, pad_id, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(items, pad_id, **kw)

    monkeypatch.setattr(sl, "preference_collate", dying)
    with pytest.raises(KeyboardInterrupt):
        run("score_logps", flags(str(tmp_path / "s")))
    monkeypatch.setattr(sl, "preference_collate", real)
    from openrlhf.recipes.score import PARTIAL_DIR

    partial = os.path.join(str(tmp_path / "s"), PARTIAL_DIR, "teacher.rank0.jsonl")
    assert len(open(partial).read().splitlines()) == 4
    resumed = [json.loads(x) for x in open(run("score_logps", flags(str(tmp_path / "s"))))]
    assert [r["teacher_chosen_logp"] for r in resumed] == pytest.approx(
        [r["teacher_chosen_logp"] for r in full], abs=1e-6
    )
    assert not os.path.exists(os.path.dirname(partial))


def test_dadpo_models_keep_every_teacher_with_its_own_renderer(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path
):
    """The frozen models of a two-teacher daDPO: the reference and both teachers, each teacher rendered with its own
    tokenizer (a default of no renderers once dropped every teacher); a renderer list of another length is refused."""
    from openrlhf.logps.frozen import teacher_models
    from openrlhf.recipes.dadpo import dadpo_models

    teachers = f"{tiny_teacher_same_vocab},{tiny_teacher_other_family}"
    flags = one_step_flags(tiny_dir, tiny_dir, teachers, pref8, str(tmp_path / "o"))
    flags[flags.index("--teacher.beta") + 1] = "0.7,0.1"
    cfg = load_config(flags, task="dadpo")
    sides = dadpo_models(cfg)
    assert [(s.name, s.model_path) for s in sides] == [
        ("ref", tiny_dir),
        ("teacher", tiny_teacher_same_vocab),
        ("teacher_2", tiny_teacher_other_family),
    ]
    assert [len(s.renderer.tokenizer) for s in sides[1:]] == [400, 350]  # each teacher's own vocabulary
    with pytest.raises(ValueError):
        teacher_models(cfg.teacher, [sides[1].renderer])


def test_bad_teacher_input(tiny_dir, tiny_no_template, pref8, tmp_path):
    from openrlhf.datasets.loading import DataError

    flags = one_step_flags(tiny_dir, tiny_dir, str(tmp_path / "missing_teacher"), pref8, str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--teacher.model_name_or_path: file or folder not found"):
        load_config(flags, task="dadpo")
    with pytest.raises(ConfigError, match="--teacher.model_name_or_path: required"):
        load_config(base_flags(tiny_dir, pref8, str(tmp_path / "o")), task="dadpo")
    bad = one_step_flags(
        tiny_dir, tiny_dir, tiny_dir, pref8, str(tmp_path / "o"), "--teacher.beta", "-0.1", "--model.beta", "-1"
    )
    with pytest.raises(ConfigError) as e:
        load_config(bad, task="dadpo")
    assert "--teacher.beta" in str(e.value) and "--model.beta" in str(e.value)
    with pytest.raises(DataError, match="--teacher.tokenizer_chat_template"):
        run("dadpo", one_step_flags(tiny_dir, tiny_dir, tiny_no_template, pref8, str(tmp_path / "o")))


@pytest.mark.slow
def test_dadpo_two_processes_zero3_other_family_teacher(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, tmp_path
):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    out = str(tmp_path / "z3")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "ref.model_name_or_path": tiny_teacher_same_vocab,
                "teacher.model_name_or_path": tiny_teacher_other_family,
                "teacher.beta": "0.2",
                "model.beta": "0.5",
                "train.batch_size": "4",
                "train.micro_batch_size": "1",
                "train.max_epochs": "2",
            }
        ),
    )
    flags[flags.index("--ds.zero_stage") + 1] = "3"
    run_deepspeed("openrlhf.cli.train_dadpo", flags)
    losses = train_losses(out)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < losses[0] - 0.02
    trained = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert not torch.equal(trained.lm_head.weight, init.lm_head.weight)


@pytest.mark.main_leg
@pytest.mark.slow
def test_score_logps_two_processes_zero3_equals_one_process(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, tmp_path
):
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(7))  # odd: the shards need padding
    flags = lambda out: score_flags(
        tiny_dir,
        data,
        out,
        "--teacher.model_name_or_path",
        tiny_teacher_other_family,  # noqa: E731
        "--ref.model_name_or_path",
        tiny_teacher_same_vocab,
        "--train.micro_batch_size",
        "2",
    )
    one = [json.loads(x) for x in open(run("score_logps", flags(str(tmp_path / "one"))))]
    two_flags = flags(str(tmp_path / "two"))
    two_flags[two_flags.index("--ds.zero_stage") + 1] = "3"
    run_deepspeed("openrlhf.cli.score_logps", two_flags)
    two = [json.loads(x) for x in open(os.path.join(str(tmp_path / "two"), "train.jsonl"))]
    assert len(two) == 7
    for a, b in zip(one, two, strict=True):
        assert a["prompt"] == b["prompt"]
        for key in ("teacher_chosen_logp", "teacher_rejected_logp", "ref_chosen_logp", "ref_rejected_logp"):
            assert b[key] == pytest.approx(a[key], abs=1e-4)
    # The 2-process file is accepted by training (its fingerprints cover its own numbers).
    run(
        "dadpo",
        one_step_flags(
            tiny_dir,
            tiny_teacher_same_vocab,
            tiny_teacher_other_family,
            str(tmp_path / "two"),
            str(tmp_path / "train"),
            "--train.batch_size",
            "6",
            "--train.micro_batch_size",
            "3",
        ),
    )
    assert len(train_losses(str(tmp_path / "train"))) == 1
