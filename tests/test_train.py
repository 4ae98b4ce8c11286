"""SFT and DPO trainers end to end on tiny models: learning, saving, resume, invariance, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from openrlhf.config import load_config
from openrlhf.utils.errors import UserError

from tiny import (
    REPO,
    as_flags,
    base_flags,
    killed_at_micro_batch,
    launch_env,
    pref_rows,
    read_metrics,
    run_deepspeed,
    run_in_process,
    run_module,
    sft_rows,
    train_losses,
    write_jsonl,
)


def run_dpo(flags: list) -> dict:
    from openrlhf.recipes.dpo import train_dpo

    return train_dpo(load_config(flags, task="dpo"))


def run_sft(flags: list) -> dict:
    from openrlhf.recipes.sft import train_sft

    return train_sft(load_config(flags, task="sft"))


@pytest.fixture()
def pref16(tmp_path):
    return write_jsonl(str(tmp_path / "pref16.jsonl"), pref_rows(16))


def test_dpo_learns_and_saves_loadable_hf_folder(tiny_dir, pref16, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = str(tmp_path / "dpo")
    last = run_dpo(
        base_flags(
            tiny_dir,
            pref16,
            out,
            *as_flags(
                {"train.batch_size": "8", "train.micro_batch_size": "4", "train.max_epochs": "4", "model.beta": "0.5"}
            ),
        )
    )
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == list(range(1, 9))
    for key in ("loss", "acc", "chosen_reward", "reject_reward", "margin", "lr", "grad_norm"):
        assert key in recs[0], key
    assert recs[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1
    assert recs[-1]["loss"] < recs[0]["loss"] - 0.05
    assert last["acc"] > 0.5
    # The saved folder is a normal HF model with the trained weights and the chat template.
    model = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(tiny_dir)
    moved = [
        n
        for (n, p), (_, q) in zip(model.named_parameters(), init.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert len(moved) > 10
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_sft_learns_and_saves(tiny_dir, sft_jsonl, tmp_path):
    from transformers import AutoModelForCausalLM

    out = str(tmp_path / "sft")
    run_sft(
        base_flags(
            tiny_dir,
            sft_jsonl,
            out,
            *as_flags(
                {
                    "train.batch_size": "4",
                    "train.micro_batch_size": "2",
                    "train.max_epochs": "5",
                    "eval.dataset": sft_jsonl,
                    "eval.split": "train",
                    "eval.steps": "5",
                    "adam.lr": "1e-2",
                }
            ),
        )
    )
    recs = read_metrics(out)
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 10
    assert losses[-1] < losses[0] * 0.8
    evals = [r for r in recs if "eval_loss" in r]
    assert [r["step"] for r in evals] == [5, 10]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 400


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_micro_batch_times_accumulation_invariance(kind, tiny_dir, tmp_path):
    # Uneven response lengths make the SFT token normalisation matter.
    rows = pref_rows(8) if kind == "dpo" else sft_rows(8)
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    curves = []
    for mb in ("1", "2", "4"):
        out = str(tmp_path / f"{kind}_mb{mb}")
        flags = base_flags(
            tiny_dir, data, out, "--train.batch_size", "4", "--train.micro_batch_size", mb, "--train.max_epochs", "2"
        )
        (run_dpo if kind == "dpo" else run_sft)(flags)
        curves.append(train_losses(out))
    assert len(curves[0]) == 4
    for c in curves[1:]:
        assert c == pytest.approx(curves[0], abs=1e-5)


@pytest.mark.parametrize("kind", ["sft", "dpo"])
@pytest.mark.parametrize("stage", ["0", "3"])
def test_dynamic_token_budget_batches_give_the_fixed_split_loss_curve(kind, stage, tiny_dir, tmp_path):
    """--train.dynamic_batch_enable: micro-batches of a token budget (so of varying row counts, some rows
    alone) train exactly like fixed micro-batches of the same global batch."""
    rows = pref_rows(8) if kind == "dpo" else sft_rows(8)
    for i, r in enumerate(rows):  # uneven lengths, so the budget makes uneven micro-batches
        r["chosen" if kind == "dpo" else "output"] += " and more" * (3 * i)
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    curves, metrics = [], []
    for extra in (
        [],
        ["--train.dynamic_batch_enable", "--train.max_tokens_per_gpu", "90"],
        ["--train.dynamic_batch_enable", "--train.max_tokens_per_gpu", "100000"],
    ):
        out = str(tmp_path / f"o{len(curves)}")
        flags = base_flags(
            tiny_dir,
            data,
            out,
            "--train.batch_size",
            "4",
            "--train.micro_batch_size",
            "2",
            "--train.max_epochs",
            "2",
            *extra,
        )
        flags[flags.index("--ds.zero_stage") + 1] = stage
        (run_dpo if kind == "dpo" else run_sft)(flags)
        curves.append(train_losses(out))
        metrics.append(read_metrics(out))
    assert len(curves[0]) == 4
    for c in curves[1:]:
        assert c == pytest.approx(curves[0], abs=1e-5)
    if kind == "dpo":
        for m in metrics[1:]:
            assert [r["chosen_reward"] for r in m] == pytest.approx([r["chosen_reward"] for r in metrics[0]], abs=1e-5)


def test_resume_after_crash_reproduces_losses(tiny_dir, pref16, tmp_path, monkeypatch):
    flags = lambda out: base_flags(
        tiny_dir,
        pref16,
        out,
        *as_flags(
            {
                "train.batch_size": "4",
                "train.micro_batch_size": "2",
                "train.max_epochs": "2",
                "ckpt.save_steps": "3",
                "ckpt.load_enable": None,
            }
        ),
    )
    full = str(tmp_path / "full")
    run_dpo(flags(full))
    expected = train_losses(full)
    assert len(expected) == 8

    # Crash in the middle of step 5 (after the step-3 checkpoint), then resume.
    crashed = str(tmp_path / "crashed")
    with killed_at_micro_batch(monkeypatch, 9), pytest.raises(KeyboardInterrupt):  # 2 per step: step 5's first
        run_dpo(flags(crashed))
    assert [r["step"] for r in read_metrics(crashed)] == [1, 2, 3, 4]
    with open(os.path.join(crashed, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 0.6')  # killed while writing a line: repaired on resume
    run_dpo(flags(crashed))
    assert [r["step"] for r in read_metrics(crashed)] == list(range(1, 9))
    assert train_losses(crashed) == pytest.approx(expected, abs=1e-5)


def test_sft_resumed_at_an_epoch_boundary_reproduces_the_run(tiny_dir, tmp_path, monkeypatch):
    """OpenRLHF 0.11.2 fixed SFT resume when a gradient-accumulation window spans an epoch boundary. Ours
    never spans one: each epoch's last partial global batch is left unused (10 rows, batches of 4: 2 steps an
    epoch, 2 rows unused), so a run killed at the first micro-batch of epoch 2 and resumed from the
    checkpoint at the end of epoch 1 gives the uninterrupted run's losses."""
    data = write_jsonl(str(tmp_path / "sft.jsonl"), sft_rows(10))
    flags = lambda out: base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {
                "train.batch_size": "4",
                "train.micro_batch_size": "2",
                "train.max_epochs": "2",
                "ckpt.save_steps": "2",
                "ckpt.load_enable": None,
            }
        ),
    )
    full = str(tmp_path / "full")
    run_in_process("sft", flags(full))
    expected = train_losses(full)
    assert len(expected) == 4
    crashed = str(tmp_path / "crashed")
    with killed_at_micro_batch(monkeypatch, 5), pytest.raises(KeyboardInterrupt):  # step 3's first: epoch 2
        run_in_process("sft", flags(crashed))
    assert [r["step"] for r in read_metrics(crashed)] == [1, 2]
    run_in_process("sft", flags(crashed))
    assert [r["step"] for r in read_metrics(crashed)] == [1, 2, 3, 4]
    assert train_losses(crashed) == pytest.approx(expected, abs=1e-6)


@pytest.mark.main_leg
@pytest.mark.slow
def test_killed_process_resumes_exactly(tiny_dir, tmp_path):
    """A real SIGKILL of the CLI process, then a resumed run: the same per-step losses."""
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(8))
    common = as_flags(
        {
            "train.batch_size": "2",
            "train.micro_batch_size": "1",
            "train.max_epochs": "12",
            "ckpt.save_steps": "4",
            "ckpt.load_enable": None,
        }
    )
    full = str(tmp_path / "full")
    cmd = [sys.executable, "-m", "openrlhf.cli.train_dpo"]
    res = subprocess.run(
        cmd + base_flags(tiny_dir, data, full, *common), env=launch_env(), cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    expected = train_losses(full)
    assert len(expected) == 48

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        cmd + base_flags(tiny_dir, data, killed, *common),
        env=launch_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline:
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 10:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(read_metrics(killed))
    assert 10 <= done < 48, "the run should have been killed part way"
    res = subprocess.run(
        cmd + base_flags(tiny_dir, data, killed, *common), env=launch_env(), cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 49))
    assert train_losses(killed) == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_dpo_two_processes_zero3_deepspeed_launcher(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    out = str(tmp_path / "z3")
    flags = base_flags(
        tiny_dir,
        data,
        out,
        *as_flags(
            {"train.batch_size": "4", "train.micro_batch_size": "1", "train.max_epochs": "2", "model.beta": "0.5"}
        ),
    )
    flags[flags.index("--ds.zero_stage") + 1] = "3"
    run_deepspeed("openrlhf.cli.train_dpo", flags)
    losses = train_losses(out)
    assert len(losses) == 8
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.02
    trained = AutoModelForCausalLM.from_pretrained(out)
    init = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert trained.model.embed_tokens.weight.shape == init.model.embed_tokens.weight.shape
    assert not torch.equal(trained.lm_head.weight, init.lm_head.weight)


@pytest.mark.both_legs
@pytest.mark.slow
@pytest.mark.parametrize("task", ["dpo", "dadpo"])
def test_one_process_and_two_processes_zero3_give_the_same_loss_curve(
    task, tiny_dir, tiny_teacher_same_vocab, tiny_teacher_other_family, tmp_path
):
    """docs/training.md "SFT": the loss curve does not depend on how the global batch is split into processes.
    The same global batch of 4 under ZeRO-3: 1 process x micro-batch 2 x 2 accumulation steps against 2 processes
    x micro-batch 1 x 2 accumulation steps. Step 1 is the same model on the same 4 pairs; a gradient averaged
    wrongly across processes or accumulation steps would change every loss from step 2 on (measured here: at most
    7e-7 apart)."""
    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    extra = as_flags({"train.batch_size": "4", "train.max_epochs": "2", "model.beta": "0.5", "adam.lr": "1e-2"})
    if task == "dadpo":
        extra += [
            "--ref.model_name_or_path",
            tiny_teacher_same_vocab,
            "--teacher.model_name_or_path",
            tiny_teacher_other_family,
            "--teacher.beta",
            "0.2",
        ]
    module = f"openrlhf.cli.train_{task}"
    curves = []
    for procs, micro in ((1, "2"), (2, "1")):
        out = str(tmp_path / f"p{procs}")
        flags = base_flags(tiny_dir, data, out, *extra)
        flags[flags.index("--ds.zero_stage") + 1] = "3"
        flags[flags.index("--train.micro_batch_size") + 1] = micro
        if procs == 1:
            res = run_module(module, flags, timeout=600)
            assert res.returncode == 0, res.stderr[-3000:]
        else:
            run_deepspeed(module, flags)
        curves.append(train_losses(out))
    one, two = curves
    assert len(one) == len(two) == 8
    assert one[-1] < one[0] - 0.05  # it trained, so later steps depend on every earlier gradient
    assert two == pytest.approx(one, abs=1e-5)


# ---- bad input -----------------------------------------------------------------------------


def test_unknown_flag_and_missing_model_rejected_before_training(tiny_dir, pref_jsonl, tmp_path):
    res = run_module(
        "openrlhf.cli.train_dpo",
        base_flags(str(tmp_path / "nope"), pref_jsonl, str(tmp_path / "o"), "--train.micro_batch_sise", "2"),
    )
    assert res.returncode == 2
    assert "--train.micro_batch_sise" in res.stderr and "--train.micro_batch_size" in res.stderr
    assert "--model.model_name_or_path" in res.stderr and "not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_rows_rejected_with_file_row_and_key(tiny_dir, tmp_path):
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), pref_rows(3) + [{"prompt": "x", "chosen": "y"}])
    res = run_module("openrlhf.cli.train_dpo", base_flags(tiny_dir, bad, str(tmp_path / "o")))
    assert res.returncode == 2
    assert "bad.jsonl" in res.stderr and "row 4" in res.stderr and "'rejected'" in res.stderr
    empty = str(tmp_path / "empty.jsonl")
    open(empty, "w").close()
    res = run_module("openrlhf.cli.train_sft", base_flags(tiny_dir, empty, str(tmp_path / "o")))
    assert res.returncode == 2 and "empty.jsonl" in res.stderr
    wrong = write_jsonl(str(tmp_path / "wrong.jsonl"), [{"input": "a", "output": 5}])
    res = run_module("openrlhf.cli.train_sft", base_flags(tiny_dir, wrong, str(tmp_path / "o")))
    assert res.returncode == 2 and "wrong.jsonl" in res.stderr and "output" in res.stderr


def test_global_batch_larger_than_the_data_is_refused_before_any_model_loads(
    tiny_dir, pref_jsonl, tmp_path, monkeypatch
):
    from openrlhf.recipes import preference

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the batch size was checked")

    monkeypatch.setattr(preference, "make_strategy", no_models)  # train_dpo's setup builds the strategy there
    with pytest.raises(UserError, match=r"8 usable rows, fewer than one global batch \(--train.batch_size 64\)"):
        run_dpo(
            base_flags(
                tiny_dir, pref_jsonl, str(tmp_path / "o"), "--train.batch_size", "64", "--train.micro_batch_size", "1"
            )
        )
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow
def test_global_batch_not_divisible_by_the_process_count(tiny_dir, pref16, tmp_path):
    """batch 3 = micro 1 x 2 processes x ? : one clear line naming both flags and the count, exit code 2."""
    res = run_deepspeed(
        "openrlhf.cli.train_dpo",
        base_flags(tiny_dir, pref16, str(tmp_path / "o"), "--train.batch_size", "3", "--train.micro_batch_size", "1"),
        check=False,
    )
    out = res.stdout + res.stderr
    lines = [line for line in out.splitlines() if line.startswith("error: ")]
    assert res.returncode == 2 and len(lines) == 1, out[-3000:]
    assert lines[0] == (
        "error: --train.batch_size: 3 is not a multiple of --train.micro_batch_size 1 x the 2 processes = 2"
    )
    assert "Traceback" not in out


def test_gradient_checkpointing_gives_the_same_losses(tiny_dir, sft_jsonl, tmp_path):
    common = ["--train.batch_size", "4", "--train.micro_batch_size", "2", "--train.max_epochs", "2"]
    run_sft(base_flags(tiny_dir, sft_jsonl, str(tmp_path / "plain"), *common))
    run_sft(base_flags(tiny_dir, sft_jsonl, str(tmp_path / "gc"), *common, "--model.gradient_checkpointing_enable"))
    assert train_losses(str(tmp_path / "gc")) == pytest.approx(train_losses(str(tmp_path / "plain")), abs=1e-5)


def test_flash_attention_without_the_package_is_a_clear_error(tiny_dir, sft_jsonl, tmp_path, monkeypatch):
    from openrlhf.utils import errors

    monkeypatch.setattr(errors, "has_package", lambda module: module != "flash_attn")  # as on a CPU machine
    with pytest.raises(UserError, match="flash_attention_2 .*needs the flash-attn package.*pip install"):
        run_sft(
            base_flags(
                tiny_dir,
                sft_jsonl,
                str(tmp_path / "o"),
                "--ds.attn_implementation",
                "flash_attention_2",
                "--train.batch_size",
                "4",
            )
        )


def test_tensorboard_logging_when_asked(tiny_dir, sft_jsonl, tmp_path):
    tb = str(tmp_path / "tb")
    run_sft(
        base_flags(tiny_dir, sft_jsonl, str(tmp_path / "o"), "--train.batch_size", "4", "--logger.tensorboard_dir", tb)
    )
    runs = os.listdir(tb)  # one folder per run (OpenRLHF's <tensorboard_dir>/<run name>)
    assert len(runs) == 1 and runs[0].startswith("exp_")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(tb, runs[0])))


def test_fresh_run_into_an_old_output_dir_starts_metrics_anew(tiny_dir, sft_jsonl, tmp_path):
    out = str(tmp_path / "o")
    flags = base_flags(tiny_dir, sft_jsonl, out, "--train.batch_size", "4", "--train.max_epochs", "2")
    run_sft(flags)
    first = read_metrics(out)
    # The folder holds a run: a fresh run into it is refused (issue 36), unless the user says overwrite.
    from openrlhf.utils.errors import UserError

    with pytest.raises(UserError, match="--ckpt.overwrite"):
        run_sft(flags)
    assert read_metrics(out) == first
    run_sft(flags + ["--ckpt.overwrite"])
    again = read_metrics(out)
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in first], abs=1e-6)


@pytest.mark.slow
def test_missing_optional_package_under_launcher_is_one_line_once(tiny_dir, sft_jsonl, tmp_path):
    """2 processes under the deepspeed launcher, wandb hidden from both: one error line, no traceback."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    # find_spec() answers None for a module whose sys.modules entry is None: wandb is "not installed".
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    env = launch_env()
    env["PYTHONPATH"] = str(blocker) + os.pathsep + env["PYTHONPATH"]
    res = run_deepspeed(
        "openrlhf.cli.train_sft",
        base_flags(tiny_dir, sft_jsonl, str(tmp_path / "o"), "--logger.wandb.key", "True"),
        timeout=300,
        check=False,
        env=env,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0
    lines = [line for line in out.splitlines() if "needs the wandb package" in line]
    assert len(lines) == 1, out[-3000:]
    assert "pip install -e '.[wandb]' in this fork's folder" in lines[0]
    assert "Traceback" not in out


def test_grad_norm_is_logged_at_every_zero_stage_and_agrees(tiny_dir, pref16, tmp_path):
    """DeepSpeed reports no gradient norm at stage 0; ours must equal stage 2's for the same steps."""
    norms = {}
    for stage in ("0", "2"):
        out = str(tmp_path / f"z{stage}")
        flags = base_flags(tiny_dir, pref16, out, "--train.batch_size", "4", "--train.micro_batch_size", "2")
        flags[flags.index("--ds.zero_stage") + 1] = stage
        run_dpo(flags)
        norms[stage] = [r["grad_norm"] for r in read_metrics(out)]
    assert len(norms["0"]) == 4 and all(n > 0 for n in norms["0"])
    assert norms["0"] == pytest.approx(norms["2"], rel=1e-4)


def test_a_checkpoint_that_cannot_be_resumed_is_refused_before_any_model_loads(tiny_dir, pref16, tmp_path, monkeypatch):
    """Cut short, without its optimizer states, or of another model: one line naming the folder and what is
    wrong, before the policy loads."""
    import shutil

    from openrlhf.models.actor import Actor

    from tiny import make_tiny

    def flags(out, model=tiny_dir):
        return base_flags(model, pref16, out, "--train.batch_size", "8", "--ckpt.save_steps", "1", "--ckpt.load_enable")

    done = str(tmp_path / "done")
    run_dpo(flags(done))
    step = os.path.join(done, "checkpoints", "global_step2")
    optim = next(n for n in os.listdir(step) if n.endswith("optim_states.pt"))

    def refused(out, match, model=tiny_dir):
        loads = []
        monkeypatch.setattr(Actor, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a)))
        with pytest.raises(UserError, match=match):
            run_dpo(flags(out, model))
        monkeypatch.undo()
        assert loads == []

    cut = str(tmp_path / "cut")
    shutil.copytree(done, cut)
    path = os.path.join(cut, "checkpoints", "global_step2", optim)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    refused(cut, f"global_step2/{optim} is cut short or not a torch file")

    lost = str(tmp_path / "lost")
    shutil.copytree(done, lost)
    os.remove(os.path.join(lost, "checkpoints", "global_step2", optim))
    refused(lost, "lacks the optimizer states of process 0")

    other = make_tiny(str(tmp_path / "wider"), hidden=64)
    refused(str(tmp_path / "done"), r"belongs to another model: \d+ weights have other shapes", model=other)


def test_evaluation_reads_every_row_weighted_by_rows(tiny_dir, pref16, tmp_path):
    """5 evaluation pairs in micro-batches of 2 (2 + 2 + 1): the last, partial micro-batch is evaluated and
    each micro-batch weighs by its rows, so the numbers equal those of micro-batches of 1 (upstream 0.11.2's
    rule); the lr is 1e-12, so both runs evaluate the same weights."""
    ev = write_jsonl(str(tmp_path / "eval5.jsonl"), pref_rows(5))
    got = {}
    for micro in ("1", "2"):
        out = str(tmp_path / f"m{micro}")
        run_dpo(
            base_flags(
                tiny_dir,
                pref16,
                out,
                *as_flags(
                    {
                        "train.batch_size": "4",
                        "train.micro_batch_size": micro,
                        "eval.dataset": ev,
                        "eval.split": "train",
                        "adam.lr": "1e-12",
                    }
                ),
            )
        )
        (got[micro],) = [r for r in read_metrics(out) if "eval_loss" in r]
    assert got["2"]["eval_loss"] == pytest.approx(got["1"]["eval_loss"], abs=1e-6)
    assert got["2"]["eval_acc"] == pytest.approx(got["1"]["eval_acc"], abs=1e-9)
    assert got["1"]["eval_acc"] * 5 == pytest.approx(round(got["1"]["eval_acc"] * 5), abs=1e-9)  # a share of 5 rows


@pytest.mark.main_leg
@pytest.mark.slow
def test_two_processes_zero3_evaluate_every_row_as_one_process(tiny_dir, pref16, tmp_path):
    """5 evaluation pairs over 2 ZeRO-3 processes in micro-batches of 1: 3 rows on one, 2 on the other,
    which runs a stand-in forward of weight 0 (their forwards go together); the numbers equal one process's."""
    ev = write_jsonl(str(tmp_path / "eval5.jsonl"), pref_rows(5))
    got = {}
    for n in (1, 2):
        out = str(tmp_path / f"p{n}")
        flags = base_flags(
            tiny_dir, pref16, out, "--train.batch_size", "4", "--eval.dataset", ev, "--eval.split", "train"
        )
        flags[flags.index("--ds.zero_stage") + 1] = "3"
        flags[flags.index("--adam.lr") + 1] = "1e-12"
        if n == 2:
            run_deepspeed("openrlhf.cli.train_dpo", flags)
        else:
            run_dpo(flags)
        (got[n],) = [r for r in read_metrics(out) if "eval_loss" in r]
    assert got[2]["eval_loss"] == pytest.approx(got[1]["eval_loss"], abs=1e-5)
    assert got[2]["eval_acc"] == pytest.approx(got[1]["eval_acc"], abs=1e-9)
