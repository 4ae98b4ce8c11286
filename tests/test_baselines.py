"""The paper's baselines end to end on tiny models: dSFT+KL (train_kd), dDPO+KL (train_dpo --kd.coef),
dKTO (train_kto) and multi-teacher daDPO; their limits and their refusals."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from openrlhf.config import load_config
from openrlhf.utils.errors import DataError

from tiny import (
    as_flags,
    base_flags,
    direct_logps,
    pref_rows,
    read_metrics,
    run_deepspeed,
    score_flags,
    sft_rows,
    train_losses,
    write_jsonl,
)
from tiny import run_in_process as run

STEPS = ["--train.batch_size", "4", "--train.micro_batch_size", "2"]


@pytest.fixture()
def sft8(tmp_path):
    return write_jsonl(str(tmp_path / "sft8.jsonl"), sft_rows(8))


@pytest.fixture()
def pref8(tmp_path):
    return write_jsonl(str(tmp_path / "pref8.jsonl"), pref_rows(8))


def _no_models(monkeypatch):
    from openrlhf.recipes import kd, preference

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the vocabularies were compared")

    for recipe in (kd, preference):  # the modules whose recipes build the strategy (train_kd; train_dpo's setup)
        monkeypatch.setattr(recipe, "make_strategy", refuse)


# ---- dSFT+KL ----------------------------------------------------------------------------------------


def test_kd_coef_zero_is_dsft_bit_for_bit(tiny_dir, tiny_teacher_same_vocab, sft8, tmp_path):
    flags = lambda out, *x: base_flags(tiny_dir, sft8, out, *STEPS, "--train.max_epochs", "2", *x)  # noqa: E731
    run("sft", flags(str(tmp_path / "sft")))
    run("kd", flags(str(tmp_path / "kd"), "--teacher.model_name_or_path", tiny_teacher_same_vocab, "--kd.coef", "0"))
    assert train_losses(str(tmp_path / "kd")) == train_losses(str(tmp_path / "sft"))
    assert all(r["kd_loss"] > 0 for r in read_metrics(str(tmp_path / "kd")))  # computed, weighted 0


def test_kd_first_step_equals_a_direct_computation_and_learns(tiny_dir, tiny_teacher_same_vocab, sft8, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path / "kd")
    run(
        "kd",
        base_flags(
            tiny_dir,
            sft8,
            out,
            *as_flags(
                {
                    "teacher.model_name_or_path": tiny_teacher_same_vocab,
                    "kd.coef": "0.4",
                    "train.batch_size": "8",
                    "train.micro_batch_size": "8",
                    "train.max_epochs": "6",
                }
            ),
        ),
    )
    # Step 1, by hand: token-mean NLL of the student + 0.4 x token-mean KL(teacher || student), over the
    # response tokens of all 8 rows (the student's own chat template, the teacher reading the same ids).
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    student = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher_same_vocab, dtype=torch.float32).eval()
    nll, kl, n = 0.0, 0.0, 0
    for row in sft_rows(8):
        msgs = [{"role": "user", "content": row["input"]}]
        p = tok(
            tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), add_special_tokens=False
        ).input_ids
        ids = tok(
            tok.apply_chat_template(msgs + [{"role": "assistant", "content": row["output"]}], tokenize=False),
            add_special_tokens=False,
        ).input_ids
        x = torch.tensor([ids])
        with torch.no_grad():
            s_lp = torch.log_softmax(student(x).logits[0, :-1], -1)[len(p) - 1 :]
            t_lp = torch.log_softmax(teacher(x).logits[0, :-1], -1)[len(p) - 1 :]
        target = torch.tensor(ids[len(p) :])
        nll -= s_lp.gather(-1, target[:, None]).sum().item()
        kl += (t_lp.exp() * (t_lp - s_lp)).sum().item()
        n += len(target)
    first = read_metrics(out)[0]
    assert first["nll_loss"] == pytest.approx(nll / n, abs=1e-5)
    assert first["kd_loss"] == pytest.approx(kl / n, abs=1e-5)
    assert first["loss"] == pytest.approx(nll / n + 0.4 * kl / n, abs=1e-5)
    losses = train_losses(out)
    assert losses[-1] < losses[0]
    # With the KL term dominating, the student moves toward the teacher.
    pulled = str(tmp_path / "pulled")
    run(
        "kd",
        base_flags(
            tiny_dir,
            sft8,
            pulled,
            *as_flags(
                {
                    "teacher.model_name_or_path": tiny_teacher_same_vocab,
                    "kd.coef": "50",
                    "train.batch_size": "8",
                    "train.micro_batch_size": "8",
                    "train.max_epochs": "6",
                }
            ),
        ),
    )
    kd = [r["kd_loss"] for r in read_metrics(pulled)]
    assert kd[-1] < 0.8 * kd[0]


def test_kd_refuses_a_teacher_of_another_vocabulary_before_loading(
    tiny_dir, tiny_teacher_other_family, sft8, pref8, tmp_path, monkeypatch
):
    _no_models(monkeypatch)
    with pytest.raises(DataError, match=r"student .* has 400 tokens, the teacher .* 350 .*Use train_dadpo"):
        run(
            "kd",
            base_flags(tiny_dir, sft8, str(tmp_path / "o"), "--teacher.model_name_or_path", tiny_teacher_other_family),
        )
    with pytest.raises(DataError, match=r"has 400 tokens, the teacher .* 350"):
        run(
            "dpo",
            base_flags(
                tiny_dir,
                pref8,
                str(tmp_path / "o"),
                "--teacher.model_name_or_path",
                tiny_teacher_other_family,
                "--kd.coef",
                "0.2",
            ),
        )


# ---- dDPO+KL ------------------------------------------------------------------------------------------


def test_ddpo_kl_adds_the_kl_of_the_chosen_responses(tiny_dir, tiny_teacher_same_vocab, pref8, tmp_path):
    one = ["--train.batch_size", "8", "--train.micro_batch_size", "8"]
    run("dpo", base_flags(tiny_dir, pref8, str(tmp_path / "dpo"), *one))
    run(
        "dpo",
        base_flags(
            tiny_dir,
            pref8,
            str(tmp_path / "kl"),
            *one,
            "--teacher.model_name_or_path",
            tiny_teacher_same_vocab,
            "--kd.coef",
            "0.2",
        ),
    )
    plain, kl = read_metrics(str(tmp_path / "dpo"))[0], read_metrics(str(tmp_path / "kl"))[0]
    assert kl["preference_loss"] == plain["preference_loss"]  # same weights at step 1: the DPO part is equal
    assert kl["kd_loss"] > 0 and kl["loss"] == pytest.approx(kl["preference_loss"] + 0.2 * kl["kd_loss"], abs=1e-6)
    assert "kd_loss" not in plain


# ---- dKTO -------------------------------------------------------------------------------------------


def test_kto_first_step_and_learning(tiny_dir, pref8, tmp_path):
    out = str(tmp_path / "kto")
    run(
        "kto",
        base_flags(
            tiny_dir,
            pref8,
            out,
            *STEPS,
            *as_flags(
                {
                    "train.max_epochs": "4",
                    "model.beta": "0.5",
                    "kto.desirable_loss_weight": "1.0",
                    "kto.undesirable_loss_weight": "2.0",
                }
            ),
        ),
    )
    m = read_metrics(out)
    # Step 1: policy = reference, so every r = 0 and z_0 = max(0, 0) = 0:
    # loss = mean(1 * (1 - sigmoid(0)), 2 * (1 - sigmoid(0))) = mean(0.5, 1.0) = 0.75
    assert m[0]["loss"] == pytest.approx(0.75, abs=1e-6) and m[0]["kl"] == 0.0
    assert m[-1]["loss"] < m[0]["loss"] and m[-1]["margin"] > 0


def test_kto_needs_two_pairs_per_micro_batch(tiny_dir, pref8, tmp_path):
    from openrlhf.config import ConfigError

    with pytest.raises(ConfigError, match=r"--train.micro_batch_size: KTO estimates its KL reference point"):
        load_config(base_flags(tiny_dir, pref8, str(tmp_path / "o"), "--train.micro_batch_size", "1"), "kto")


def test_kto_evaluates_every_row_in_micro_batches_of_two_and_refuses_a_one_row_eval_set(tiny_dir, pref8, tmp_path):
    """5 evaluation pairs in micro-batches of 2: the last pair joins the micro-batch before it (KTO's reference
    point needs two); an evaluation set of 1 pair is refused before training."""
    from openrlhf.utils.errors import DataError

    def flags(out, n_eval):
        ev = write_jsonl(str(tmp_path / f"eval{n_eval}.jsonl"), pref_rows(n_eval))
        return base_flags(
            tiny_dir, pref8, out, "--train.batch_size", "4", "--train.micro_batch_size", "2", "--eval.dataset", ev
        ) + ["--eval.split", "train"]

    out = str(tmp_path / "five")
    run("kto", flags(out, 5))
    (ev,) = [r for r in read_metrics(out) if "eval_loss" in r]
    assert math.isfinite(ev["eval_loss"])
    with pytest.raises(DataError, match="--eval.dataset: 1 rows; .*at least 2 rows on each of the 1 processes"):
        run("kto", flags(str(tmp_path / "one"), 1))
    assert not os.path.exists(os.path.join(tmp_path, "one", "metrics.jsonl"))


# ---- several teachers -------------------------------------------------------------------------------


def test_two_teachers_first_step_by_hand_and_a_zero_weight_teacher_changes_nothing(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path
):
    one = as_flags(
        {
            "train.batch_size": "8",
            "train.micro_batch_size": "4",
            "model.beta": "0.3",
            "ref.model_name_or_path": tiny_dir,
        }
    )
    a, b = tiny_teacher_same_vocab, tiny_teacher_other_family
    run(
        "dadpo",
        base_flags(
            tiny_dir,
            pref8,
            str(tmp_path / "two"),
            *one,
            "--teacher.model_name_or_path",
            f"{a},{b}",
            "--teacher.beta",
            "0.7,0.2",
        ),
    )
    pc, pr = direct_logps(tiny_dir, pref_rows(8))
    ac, ar = direct_logps(a, pref_rows(8))
    bc, br = direct_logps(b, pref_rows(8))
    # policy = reference at step 1: z = 0.7 (rt_w^a - rt_l^a) + 0.2 (rt_w^b - rt_l^b)
    z = 0.7 * ((pc - ac) - (pr - ar)) + 0.2 * ((pc - bc) - (pr - br))
    first = read_metrics(str(tmp_path / "two"))[0]
    assert first["loss"] == pytest.approx(-torch.nn.functional.logsigmoid(z).mean().item(), abs=1e-5)
    assert first["teacher_2_chosen_reward"] == pytest.approx((0.2 * (pc - bc)).mean().item(), abs=1e-5)

    run(
        "dadpo",
        base_flags(
            tiny_dir,
            pref8,
            str(tmp_path / "a"),
            *one,
            "--train.max_epochs",
            "2",
            "--teacher.model_name_or_path",
            a,
            "--teacher.beta",
            "0.7",
        ),
    )
    run(
        "dadpo",
        base_flags(
            tiny_dir,
            pref8,
            str(tmp_path / "a0"),
            *one,
            "--train.max_epochs",
            "2",
            "--teacher.model_name_or_path",
            f"{a},{b}",
            "--teacher.beta",
            "0.7,0",
        ),
    )
    assert train_losses(str(tmp_path / "a0")) == train_losses(str(tmp_path / "a"))


def test_two_teachers_cached_once_each_and_checked(
    tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, pref8, tmp_path
):
    a, b = tiny_teacher_same_vocab, tiny_teacher_other_family
    scored = str(tmp_path / "scored")
    path = run(
        "score_logps",
        score_flags(
            tiny_dir, pref8, scored, "--teacher.model_name_or_path", f"{a},{b}", "--train.micro_batch_size", "4"
        ),
    )
    row = json.loads(open(path).readline())
    for prefix in ("teacher", "teacher_2"):
        assert {f"{prefix}_chosen_logp", f"{prefix}_rejected_logp", f"{prefix}_logp_fingerprint"} <= set(row)
    flags = lambda data, out, paths: base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "train.batch_size": "8",
                "train.micro_batch_size": "4",
                "model.beta": "0",
                "teacher.model_name_or_path": paths,
                "teacher.beta": "0.5,0.1",
            }
        ),
    )
    run("dadpo", flags(pref8, str(tmp_path / "online"), f"{a},{b}"))
    run("dadpo", flags(scored, str(tmp_path / "cached"), f"{a},{b}"))
    assert train_losses(str(tmp_path / "cached")) == pytest.approx(train_losses(str(tmp_path / "online")), abs=1e-5)
    with pytest.raises(DataError, match="cached teacher log-probs do not belong"):
        run("dadpo", flags(scored, str(tmp_path / "swapped"), f"{b},{a}"))


# ---- 2 processes, ZeRO-3 -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,extra",
    [
        ("openrlhf.cli.train_kd", ["--kd.coef", "0.4"]),
        ("openrlhf.cli.train_dpo", ["--kd.coef", "0.2", "--model.beta", "0.5"]),
        ("openrlhf.cli.train_kto", ["--model.beta", "0.5"]),
    ],
)
def test_new_clis_train_with_two_processes_zero3(module, extra, tiny_dir, tiny_teacher_same_vocab, tmp_path):
    rows = sft_rows(16) if module.endswith("train_kd") else pref_rows(16)
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    out = str(tmp_path / "o")
    teacher = [] if module.endswith("train_kto") else ["--teacher.model_name_or_path", tiny_teacher_same_vocab]
    flags = base_flags(
        tiny_dir,
        data,
        out,
        "--train.batch_size",
        "8",
        "--train.micro_batch_size",
        "2",
        "--train.max_epochs",
        "4",
        *teacher,
        *extra,
    )
    flags[flags.index("--ds.zero_stage") + 1] = "3"
    run_deepspeed(module, flags)
    losses = train_losses(out)
    assert len(losses) == 8 and math.isfinite(losses[0])
    assert sum(losses[-2:]) / 2 < losses[0]
    assert os.path.exists(os.path.join(out, "model.safetensors"))
