"""GPU paths that tests/test_gpu.py does not cover, run by benchmarks/gpu_check.py (parts b, c, d) on a GPU
machine: packed rows with flash-attention against padded ones; two GPUs with ZeRO-3, packing and dynamic
batches, killed after a checkpoint and resumed (also on two CPU processes, marker slow); vLLM with tensor
parallelism 2 and two engines. Each test skips, saying why, where its hardware or package is missing."""

from __future__ import annotations

import math
import os

import pytest
import torch

from tiny import (
    TOPICS,
    as_flags,
    base_flags,
    launch_env,
    make_talking_teacher,
    make_tiny,
    pref_rows,
    read_metrics,
    run_deepspeed,
    run_module,
    train_losses,
    write_jsonl,
)


def _cuda_with_flash():
    if not torch.cuda.is_available():
        pytest.fail("no CUDA GPU (these tests are deselected on CPU machines by -m 'not gpu')")
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (pip install -e '.[flash]')")


def _gpus(n: int) -> None:
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        pytest.skip(f"needs {n} CUDA GPUs, this machine has {have}")


# ---- b: packed rows with flash-attention ---------------------------------------------------------


def _llama(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,  # head size 64: a size every flash-attention kernel has
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg).to("cuda", dtype), cfg


def _as(model, attn: str):
    model.set_attn_implementation(attn)
    return model


@pytest.mark.gpu
def test_packed_rows_with_flash_attention_equal_padded_rows_and_do_not_see_each_other():
    """One packed row of three sequences through flash-attention's varlen kernel (bf16): each sequence's
    response log-probs are what the padded batch gives (as close to an fp32 computation as the padded
    ones are), a sequence's values do not change when another sequence of the row changes (bitwise),
    and they do change when the same tokens run as one continuous sequence (so the check can fail)."""
    from openrlhf.models.actor import _varlen_attention, masked_token_logps

    _cuda_with_flash()
    model, _ = _llama(torch.bfloat16)
    _as(model, "flash_attention_2")
    assert _varlen_attention(model)
    g = torch.Generator().manual_seed(1)
    lengths, prompts = [40, 23, 57], [9, 5, 20]
    seqs = [torch.randint(3, 1000, (n,), generator=g) for n in lengths]
    other_first = torch.randint(3, 1000, (lengths[0],), generator=g)  # same length, other tokens

    def masks():
        return [torch.cat([torch.zeros(p), torch.ones(n - p)]).long() for n, p in zip(lengths, prompts, strict=True)]

    def packed(first):
        parts = [first] + seqs[1:]
        ids = torch.cat(parts)[None].cuda()
        pos = torch.cat([torch.arange(len(s)) for s in parts])[None].cuda()
        lm = torch.cat(masks())[None].cuda()
        lp, _ = masked_token_logps(model, ids, None, lm, position_ids=pos)
        starts = [0, lengths[0], lengths[0] + lengths[1]]
        # token_logps[j] predicts token j + 1: a sequence's response values sit at [start + p - 1, start + n - 1)
        return [lp[0, s + p - 1 : s + n - 1] for s, n, p in zip(starts, lengths, prompts, strict=True)]

    def padded(m):
        T = max(lengths)
        ids = torch.zeros(3, T, dtype=torch.long)
        att, lm = torch.zeros(3, T, dtype=torch.long), torch.zeros(3, T, dtype=torch.long)
        for i, (s, mk) in enumerate(zip(seqs, masks(), strict=True)):
            ids[i, : len(s)], att[i, : len(s)], lm[i, : len(s)] = s, 1, mk
        lp, _ = masked_token_logps(m, ids.cuda(), att.cuda(), lm.cuda())
        return [lp[i, p - 1 : n - 1] for i, (n, p) in enumerate(zip(lengths, prompts, strict=True))]

    with torch.no_grad():
        a, b = packed(seqs[0]), packed(other_first)
        pad = padded(model)
        truth = padded(_as(_llama(torch.float32)[0], "sdpa"))
        # the same tokens as ONE sequence (positions continue): the second sequence now sees the first
        joined_ids = torch.cat(seqs[:2])[None].cuda()
        joined_mask = torch.cat(masks()[:2])[None].cuda()
        joined, _ = masked_token_logps(model, joined_ids, torch.ones_like(joined_ids), joined_mask)
    for k in (1, 2):
        assert torch.equal(a[k], b[k]), f"sequence {k} changed when sequence 0 of its packed row changed"
    seen = joined[0, lengths[0] + prompts[1] - 1 : lengths[0] + lengths[1] - 1]
    assert not torch.equal(seen, a[1])  # context does move these values: the check above can fail
    for k in range(3):
        err_packed = (a[k].float() - truth[k]).abs().max().item()
        err_padded = (pad[k].float() - truth[k]).abs().max().item()
        assert err_padded < 0.1, err_padded
        assert err_packed <= 2 * err_padded + 1e-3, (k, err_packed, err_padded)


@pytest.mark.gpu
def test_dpo_packed_with_flash_attention_trains_like_padded_in_bf16(tmp_path):
    """train_dpo with --ds.packing_samples and flash-attention, bf16, on one GPU: the padded run's losses."""
    _cuda_with_flash()
    student = make_tiny(str(tmp_path / "student"), hidden=128)  # head size 32
    rows = pref_rows(8)
    for i, r in enumerate(rows):
        r["chosen"] += " and more" * (3 * i)  # uneven lengths: padding to remove
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    losses = {}
    for packing in ("false", "true"):
        out = str(tmp_path / f"p{packing}")
        flags = base_flags(
            student,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "4",
                    "train.micro_batch_size": "2",
                    "train.max_epochs": "2",
                    "ds.param_dtype": "bf16",
                    "ds.attn_implementation": "flash_attention_2",
                    "ds.packing_samples": packing,
                }
            ),
        )
        res = run_module("openrlhf.cli.train_dpo", flags, timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
        losses[packing] = train_losses(out)
    assert len(losses["true"]) == 4 and all(math.isfinite(x) for x in losses["true"])
    assert losses["true"] == pytest.approx(losses["false"], abs=2e-2)


# ---- c: two processes, ZeRO-3, packing + dynamic batches, killed after a checkpoint, resumed -------------

# Loaded by every process of the launch (a sitecustomize on PYTHONPATH): after the checkpoint of step
# CRASH_AFTER_STEP is written, every rank meets at a barrier and exits at once, as a crash would end it.
CRASH_AFTER_CHECKPOINT = """
import os

if os.environ.get("RANK") is not None and os.environ.get("CRASH_AFTER_STEP"):
    import torch.distributed as dist

    from openrlhf.trainer import base

    _save = base.Trainer._save_checkpoint

    def _save_then_crash(self, step):
        _save(self, step)
        if step == int(os.environ["CRASH_AFTER_STEP"]):
            dist.barrier()
            os._exit(17)

    base.Trainer._save_checkpoint = _save_then_crash
"""


@pytest.mark.main_leg
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_two_processes_zero3_packing_dynamic_batches_resume_mid_epoch(device, tmp_path):
    """Two processes (two GPUs, or two CPU processes with gloo), ZeRO-3 with partitioned weights, packed
    rows, token-budget micro-batches and a teacher of another family: a run killed right after its step-4
    checkpoint (mid-epoch: 3 steps per epoch) resumes with the same flags and gives the uninterrupted
    run's per-step losses (fp32)."""
    if device == "cuda":
        _gpus(2)
    student = make_tiny(str(tmp_path / "student"), hidden=320)  # big enough that ZeRO-3 partitions it
    teacher = make_tiny(str(tmp_path / "teacher"), style="gemma", vocab_size=350, seed=2, hidden=320)
    rows = pref_rows(24)
    for i, r in enumerate(rows):
        r["chosen"] += " and more" * (i % 8) * 3
    data = write_jsonl(str(tmp_path / "d.jsonl"), rows)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(CRASH_AFTER_CHECKPOINT)

    def flags(out):
        f = base_flags(
            student,
            data,
            out,
            *as_flags(
                {
                    "train.batch_size": "8",
                    "train.max_epochs": "2",
                    "ds.packing_samples": "true",
                    "train.dynamic_batch_enable": None,
                    "train.max_tokens_per_gpu": "320",
                    "teacher.model_name_or_path": teacher,
                    "teacher.beta": "0.3",
                    "ckpt.save_steps": "2",
                    "ckpt.load_enable": None,
                }
            ),
        )
        f[f.index("--ds.zero_stage") + 1] = "3"
        return f

    def env(crash: bool):
        extra = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
        if crash:
            extra["CRASH_AFTER_STEP"] = "4"
        e = launch_env(**extra)
        e["PYTHONPATH"] = str(tmp_path / "site") + os.pathsep + e["PYTHONPATH"]
        return e

    full = str(tmp_path / "full")
    run_deepspeed("openrlhf.cli.train_dadpo", flags(full), timeout=600, env=env(False))
    expected = train_losses(full)
    assert len(expected) == 6

    killed = str(tmp_path / "killed")
    res = run_deepspeed("openrlhf.cli.train_dadpo", flags(killed), timeout=600, env=env(True), check=False)
    assert res.returncode != 0, "the run should have been ended after its step-4 checkpoint"
    assert [r["step"] for r in read_metrics(killed)] == [1, 2, 3, 4]
    res = run_deepspeed("openrlhf.cli.train_dadpo", flags(killed), timeout=600, env=env(False))
    assert "resumed from" in res.stdout + res.stderr and "at step 4" in res.stdout + res.stderr
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 7))
    assert train_losses(killed) == pytest.approx(expected, abs=1e-5)


# ---- d: vLLM on several GPUs ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_tensor_parallel_and_two_engines_answer_like_the_hf_backend(tmp_path):
    """A tiny model fitted to answer "Tell me about X." with "It is nice.": vLLM with tensor parallelism 2
    (one engine), with two engines of one GPU each, and (4 GPUs or more) two engines of two, greedy in
    bf16, give the hf backend's answers, which are the fitted ones."""
    import json

    _gpus(2)
    pytest.importorskip("vllm", reason="vllm is not installed (pip install -e '.[vllm]')")
    model = make_talking_teacher(str(tmp_path / "model"), hidden=256)  # head size 64 for vLLM's kernels
    prompts = write_jsonl(
        str(tmp_path / "p.jsonl"), [{"id": f"p{i}", "prompt": f"Tell me about {t}."} for i, t in enumerate(TOPICS)]
    )

    def answers(name, *extra):
        out = str(tmp_path / f"{name}.jsonl")
        flags = [
            *as_flags(
                {
                    "model.model_name_or_path": model,
                    "data.dataset": prompts,
                    "data.apply_chat_template": None,
                    "generate.output_path": out,
                    "ds.param_dtype": "bf16",
                    "generate.max_new_tokens": "16",
                }
            ),
            *extra,
        ]
        res = run_module("openrlhf.cli.generate", flags, timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
        return {r["id"]: r["response"] for r in map(json.loads, open(out))}

    hf = answers("hf", "--generate.backend", "hf")
    assert set(hf.values()) == {"It is nice."}, hf
    layouts = [("2", "1"), ("1", "2")] + ([("2", "2")] if torch.cuda.device_count() >= 4 else [])
    for tp, engines in layouts:
        got = answers(
            f"vllm_tp{tp}_x{engines}",
            *as_flags(
                {
                    "generate.backend": "vllm",
                    "vllm.tensor_parallel_size": tp,
                    "vllm.num_engines": engines,
                    "vllm.enforce_eager": None,
                    "vllm.max_model_len": "512",
                    "vllm.gpu_memory_utilization": "0.3",
                }
            ),
        )
        assert got == hf, (tp, engines)
