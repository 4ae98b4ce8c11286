"""Checkpoints that cross with OpenRLHF both ways, resume positions from either client state, and what the
checkpoint flags keep (--ds.disable_ds_ckpt, --ckpt.max_mem)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from openrlhf.config import load_config

from tiny import (
    as_flags,
    base_flags,
    pref_rows,
    read_metrics,
    run_in_process,
    train_losses,
    write_jsonl,
)


def _as_openrlhf_checkpoint(ours: str, tag: str, dst: str, batch_size: int) -> None:
    """An OpenRLHF 0.11 checkpoint folder from one of ours, written from what OpenRLHF documents and keeps:
    DeepSpeed's files of ``tag`` and a ``latest`` pointer, the engine's module under the HF model's
    names, and a client state of ``{"consumed_samples": global_step x batch_size}`` only (no RNG files,
    no meta file, none of our keys)."""
    os.makedirs(dst)
    shutil.copytree(os.path.join(ours, tag), os.path.join(dst, tag))
    for name in os.listdir(os.path.join(dst, tag)):
        if name.startswith("rng_state_rank") or name == "openrlhf_ckpt.json":
            os.remove(os.path.join(dst, tag, name))
    path = os.path.join(dst, tag, "mp_rank_00_model_states.pt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("openrlhf_client_state", "global_step", "epoch", "epoch_consumed_samples"):
        ckpt.pop(key)
    step = int(tag[len("global_step") :])
    ckpt["consumed_samples"] = step * batch_size
    torch.save(ckpt, path)
    with open(os.path.join(dst, "latest"), "w") as f:
        f.write(tag)


def test_checkpoints_cross_with_openrlhf_both_ways(tiny_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(str(tmp_path / "p.jsonl"), pref_rows(16))
    flags = lambda out, *x: base_flags(
        tiny_dir,
        data,
        out,
        "--train.batch_size",
        "4",  # noqa: E731
        "--train.micro_batch_size",
        "2",
        "--train.max_epochs",
        "2",
        *x,
    )
    full = str(tmp_path / "full")
    run_in_process(
        "dpo",
        flags(
            full,
            *as_flags({"ckpt.save_steps": "3", "ckpt.save_hf": None, "ckpt.max_num": "5", "ckpt.load_enable": None}),
        ),
    )
    # --ckpt.load_enable with nothing to resume: one line naming where it looked.
    said = [line for line in capsys.readouterr().out.splitlines() if "--ckpt.load_enable" in line]
    assert len(said) == 1 and os.path.join(full, "checkpoints") in said[0] and "step 0" in said[0]
    expected = train_losses(full)
    assert len(expected) == 8  # 4 steps per epoch
    ckdir = os.path.join(full, "checkpoints")

    # Ours -> OpenRLHF: what its train_dpo does on resume (DeepSpeed's load_checkpoint of the engine around
    # the HF model, strict, following `latest`; then states["consumed_samples"]).
    from openrlhf.utils.deepspeed.strategy import DeepspeedStrategy

    cfg = load_config(flags(str(tmp_path / "x")), task="dpo")
    s = DeepspeedStrategy(cfg.ds, cfg.train, cfg.max_norm, cfg.adam)
    s.setup_distributed()
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir)
    opt = s.create_optimizer(hf)
    engine = s.prepare_train(hf, opt, s.create_scheduler(opt, "cosine_with_min_lr", 0.0, 8))
    load_path, states = engine.load_checkpoint(ckdir)
    assert load_path is not None and os.path.basename(os.path.dirname(load_path)) == "global_step6"
    assert states["consumed_samples"] == 6 * 4
    # OpenRLHF's resume arithmetic on that number: step 6 = epoch 1, 8 rows of it done.
    assert (24 // 4 // 4, 24 % (4 * 4)) == (1, 8)
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(ckdir, "global_step6_hf"))
    for (n, p), (_, q) in zip(engine.module.named_parameters(), exported.named_parameters(), strict=True):
        assert torch.equal(p.detach(), q.detach()), n
    s.finish()

    # OpenRLHF -> ours: its step-3 checkpoint resumes here at step 3, the same data position: the tail
    # of the loss curve is the uninterrupted run's.
    upstream = str(tmp_path / "ckpt" / "checkpoints_dpo")
    _as_openrlhf_checkpoint(ckdir, "global_step3", upstream, batch_size=4)
    resumed = str(tmp_path / "resumed")
    run_in_process("dpo", flags(resumed, "--ckpt.path", upstream, "--ckpt.load_enable"))
    assert "resumed from" in capsys.readouterr().out
    recs = read_metrics(resumed)
    assert [r["step"] for r in recs] == [4, 5, 6, 7, 8]
    assert train_losses(resumed) == pytest.approx(expected[3:], abs=1e-5)


def test_module_weights_under_hf_names_and_earlier_checkpoints_still_load(tiny_dir):
    from transformers import AutoModelForCausalLM

    from openrlhf.models.actor import Actor
    from openrlhf.utils.deepspeed.wrapping import hf_names_hook, load_module_either_naming

    actor = Actor(AutoModelForCausalLM.from_pretrained(tiny_dir))
    prefixed = {k: v.clone() for k, v in actor.state_dict().items()}  # how earlier versions saved it
    assert all(k.startswith("model.") for k in prefixed) and "model.lm_head.weight" in prefixed
    actor.register_state_dict_post_hook(hf_names_hook)
    hf_named = actor.state_dict()
    assert list(hf_named) == list(actor.model.state_dict())  # OpenRLHF's names: the HF model's own
    other = Actor(AutoModelForCausalLM.from_pretrained(tiny_dir))
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_module_either_naming(src=hf_named, dst=other)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), actor.parameters(), strict=True))
    for p in other.parameters():
        torch.nn.init.zeros_(p)
    load_module_either_naming(src=prefixed, dst=other)
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), actor.parameters(), strict=True))


def test_no_checkpoint_line_names_openrlhf_default_folders(tmp_path, monkeypatch):
    from openrlhf.trainer.base import _openrlhf_default_hint

    monkeypatch.chdir(tmp_path)
    assert _openrlhf_default_hint() == ""
    os.makedirs(tmp_path / "ckpt" / "checkpoints_dpo" / "global_step4")
    assert "ckpt/checkpoints_dpo holds one: pass --ckpt.path" in _openrlhf_default_hint()


def test_resume_position_from_either_client_state():
    from openrlhf.utils.deepspeed import ckpt_io

    ours = ckpt_io.trainer_state(step=6, batch_size=4, steps_per_epoch=4)
    assert ours == {"consumed_samples": 24, "global_step": 6, "epoch": 1, "epoch_consumed_samples": 8}
    assert ckpt_io.resume_position(ours, 4, 4) == (6, 1, 8)
    assert ckpt_io.resume_position({"consumed_samples": 24}, 4, 4) == (6, 1, 8)  # OpenRLHF's
    assert ckpt_io.resume_position({"consumed_samples": 16}, 4, 4) == (4, 1, 0)  # an epoch boundary
    assert ckpt_io.resume_position({"step": 3}, 4, 4) == (3, 0, 12)  # a folder name only (Ray's meta read)


def test_disable_ds_writes_no_resumable_checkpoint_but_hf_exports(tiny_dir, sft_jsonl, tmp_path):
    out = str(tmp_path / "o")
    run_in_process(
        "sft",
        base_flags(
            tiny_dir,
            sft_jsonl,
            out,
            *as_flags(
                {
                    "train.batch_size": "2",
                    "ckpt.save_steps": "2",
                    "ckpt.disable_ds": None,
                    "ckpt.save_hf": None,
                    "train.max_epochs": "1",
                }
            ),
        ),
    )
    names = sorted(os.listdir(os.path.join(out, "checkpoints")))
    assert names == ["global_step2_hf", "global_step4_hf"]


def test_ckpt_max_mem_deletes_the_oldest_checkpoints(tmp_path):
    from openrlhf.utils.deepspeed import ckpt_io

    ck = str(tmp_path / "ck")
    for step in (1, 2, 3):
        os.makedirs(os.path.join(ck, f"global_step{step}"))
        with open(os.path.join(ck, f"global_step{step}", "w.bin"), "wb") as f:
            f.write(b"\0" * 600_000)
    # Three checkpoints of 0.6 MB against 1.3 MB (0.0012 GB): the oldest goes.
    assert ckpt_io.prune(ck, max_num=10, keep_tag="global_step3", max_gb=1.3e6 / 1024**3) == ["global_step1"]
    assert ckpt_io.prune(ck, max_num=10, keep_tag="global_step3", max_gb=1.0) == []
