"""Checks that need a CUDA GPU (marker `gpu`; CI, on CPU, deselects them). Run on a GPU machine with
`python -m pytest tests/test_gpu.py -m gpu` (with deepspeed installed; bitsandbytes / liger-kernel for
their tests). Tiny random models: what is checked is that each GPU path runs and learns, in bf16."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tiny import as_flags, base_flags, pref_rows, read_metrics, run_module, write_jsonl

pytestmark = pytest.mark.gpu


def _cuda():
    if not torch.cuda.is_available():
        pytest.fail("no CUDA GPU (these tests are deselected on CPU machines by -m 'not gpu')")


@pytest.fixture()
def pairs(tmp_path):
    return write_jsonl(str(tmp_path / "pairs.jsonl"), pref_rows(8))


def test_response_logps_on_cuda_bf16_equal_full_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlhf.models.actor import masked_token_logps

    _cuda()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model = model.to("cuda", torch.bfloat16)
    ids = torch.randint(3, 1000, (2, 64), device="cuda")
    attn = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, 40:] = 1
    ours, mask = masked_token_logps(model, ids, attn, loss_mask)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    ref = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask
    assert torch.allclose(ours, ref, atol=2e-2), (ours - ref).abs().max()


def test_packed_rows_run_as_one_forward_on_cuda_and_equal_padded():
    """On a GPU a packed row (sdpa) runs as one forward (one small forward per sequence was 4x slower there,
    docs/performance.md) with the values of the padded rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from openrlhf.models.actor import masked_token_logps

    _cuda()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    model = model.to("cuda", torch.float32)
    calls = []
    model.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    a, b = torch.randint(3, 1000, (1, 9), device="cuda"), torch.randint(3, 1000, (1, 6), device="cuda")
    ma = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]], device="cuda")
    mb = torch.tensor([[0, 0, 1, 1, 1, 1]], device="cuda")
    pos = torch.cat([torch.arange(9), torch.arange(6)])[None].cuda()
    packed, _ = masked_token_logps(model, torch.cat([a, b], 1), None, torch.cat([ma, mb], 1), position_ids=pos)
    assert len(calls) == 1
    sa, _ = masked_token_logps(model, a, torch.ones_like(a), ma)
    sb, _ = masked_token_logps(model, b, torch.ones_like(b), mb)
    assert torch.allclose(packed[0, :8], sa[0], atol=1e-4) and torch.allclose(packed[0, 9:], sb[0], atol=1e-4)


def _train(tiny_dir, teacher, pairs, out, *extra, timeout=900):
    flags = base_flags(
        tiny_dir,
        pairs,
        out,
        *as_flags(
            {
                "teacher.model_name_or_path": teacher,
                "ref.model_name_or_path": tiny_dir,
                "train.batch_size": "4",
                "train.micro_batch_size": "2",
                "train.max_epochs": "2",
                "ds.param_dtype": "bf16",
            }
        ),
        *extra,
    )
    res = run_module("openrlhf.cli.train_dadpo", flags, timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 4 and all(l == l and abs(l) < 1e4 for l in losses), losses  # noqa: E741
    assert losses[-1] < losses[0], losses
    return res


@pytest.mark.parametrize("zero", ["0", "2", "3"])
def test_dadpo_trains_on_one_gpu_in_bf16(zero, tiny_dir, tiny_teacher_other_family, pairs, tmp_path):
    _cuda()
    out = str(tmp_path / f"z{zero}")
    _train(tiny_dir, tiny_teacher_other_family, pairs, out, "--ds.zero_stage", zero)
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in cfg


def test_dadpo_with_liger_kernels_trains(tiny_dir, tiny_teacher_other_family, pairs, tmp_path):
    _cuda()
    pytest.importorskip("liger_kernel")
    _train(tiny_dir, tiny_teacher_other_family, pairs, str(tmp_path / "liger"), "--ds.use_liger_kernel")


def test_qlora_dadpo_trains_and_saves_a_plain_merged_folder(tiny_dir, tiny_teacher_other_family, pairs, tmp_path):
    from transformers import AutoModelForCausalLM

    _cuda()
    pytest.importorskip("bitsandbytes")
    out = str(tmp_path / "qlora")
    _train(
        tiny_dir,
        tiny_teacher_other_family,
        pairs,
        out,
        *as_flags({"ds.lora.rank": "8", "ds.lora.alpha": "16", "ds.load_in_4bit": None, "adam.lr": "5e-3"}),
    )
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert "quantization_config" not in cfg  # a plain HF folder, not bitsandbytes' packed weights
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).to("cuda")
    ids = torch.randint(3, 300, (1, 16), device="cuda")
    assert torch.isfinite(merged(input_ids=ids).logits).all()
