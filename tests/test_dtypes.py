"""The numerics users run: bf16 / fp16 as well as fp32, ZeRO 0-3, positions past 1024.

At step 0 the policy IS its reference, so DPO's first loss is exactly ln 2 and both rewards exactly 0, at
every ZeRO stage and in every dtype; a frozen model must therefore be cast the way DeepSpeed casts the
policy (parameters only: the rotary ``inv_freq`` buffer stays fp32, and rounded to bf16 it would turn the
phase at position 1,100 by up to ~1 rad with base 1e6). The teacher's log-probs computed online in the
training job equal those ``score_logps`` caches, bit for bit, in the same dtype.

On a CUDA machine the same tests run on the GPU (the strategy takes the GPU when there is one);
``benchmarks/gpu_check.sh`` runs them there."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from openrlhf.utils.deepspeed.strategy import cast_params_like_deepspeed
from openrlhf.utils.errors import UserError

from tiny import base_flags, long_pref_rows, read_metrics, score_flags, write_jsonl
from tiny import run_in_process as run

LN2_FP32 = float(np.float32(math.log(2)))  # -logsigmoid(0) as the loss computes it, in fp32


@pytest.fixture(scope="module")
def long_pairs(tmp_path_factory):
    return write_jsonl(str(tmp_path_factory.mktemp("long_pairs") / "pairs.jsonl"), long_pref_rows(2))


def _flags(model, data, out, stage, dtype, *extra):
    flags = base_flags(model, data, out, "--train.batch_size", "2", "--data.max_len", "4096", *extra)
    flags[flags.index("--ds.zero_stage") + 1] = str(stage)
    flags[flags.index("--ds.param_dtype") + 1] = dtype
    return flags


@pytest.mark.parametrize(
    "stage,dtype",
    [
        (0, "bf16"),
        (1, "bf16"),
        (2, "bf16"),
        (3, "bf16"),
        (2, "fp32"),
        # DeepSpeed's CPU accelerator has no fp16 (refused in one line: test_fp16_on_cpu_is_refused_in_one_line).
        pytest.param(2, "fp16", marks=pytest.mark.gpu),
        pytest.param(3, "fp16", marks=pytest.mark.gpu),
    ],
)
def test_reference_equals_policy_at_step_0(stage, dtype, tiny_long_dir, long_pairs, tmp_path):
    out = str(tmp_path / "dpo")
    run("dpo", _flags(tiny_long_dir, long_pairs, out, stage, dtype))
    first = read_metrics(out)[0]
    assert first["chosen_reward"] == 0.0 and first["reject_reward"] == 0.0, first
    assert first["loss"] == LN2_FP32, first


def test_fp16_on_cpu_is_refused_in_one_line(tiny_long_dir, long_pairs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on this machine's GPU")
    with pytest.raises(UserError, match=r"--ds.param_dtype fp16 needs a GPU"):
        run("dpo", _flags(tiny_long_dir, long_pairs, str(tmp_path / "o"), 2, "fp16"))


def test_frozen_cast_keeps_buffers_as_deepspeed_keeps_the_policys(tiny_long_dir):
    """``Module.to(bf16)`` rounds ``inv_freq``; the frozen cast leaves it as loaded (fp32), casts every
    floating parameter, and gives the reference the same tensors a DeepSpeed engine gives the policy."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_long_dir, dtype=torch.bfloat16)
    inv_freq = loaded.model.rotary_emb.inv_freq.clone()
    assert inv_freq.dtype == torch.float32
    frozen = cast_params_like_deepspeed(AutoModelForCausalLM.from_pretrained(tiny_long_dir), torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in frozen.parameters())
    assert torch.equal(frozen.model.rotary_emb.inv_freq, inv_freq)
    whole = AutoModelForCausalLM.from_pretrained(tiny_long_dir).to(dtype=torch.bfloat16)
    assert whole.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # what the old cast did
    # The rounding matters at long positions: the phase moves by a large fraction of a radian.
    positions = torch.tensor(1100.0)
    shift = (positions * (whole.model.rotary_emb.inv_freq.float() - inv_freq)).abs().max()
    assert shift > 0.1


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_teacher_online_logps_equal_score_logps_cached_ones(
    dtype, tiny_long_dir, tiny_long_teacher, long_pairs, tmp_path
):
    """daDPO's first step from online teacher log-probs and from score_logps' cache (same dtype, ZeRO-2):
    the same losses bit for bit (one pair per micro-batch in both, so the forwards are the same)."""
    teacher = ("--teacher.model_name_or_path", tiny_long_teacher, "--model.beta", "0.3", "--teacher.beta", "0.7")
    online = str(tmp_path / "online")
    run("dadpo", _flags(tiny_long_dir, long_pairs, online, 2, dtype, *teacher))

    scored = str(tmp_path / "scored")
    score = score_flags(
        tiny_long_dir, long_pairs, scored, "--teacher.model_name_or_path", tiny_long_teacher, "--data.max_len", "4096"
    )
    score[score.index("--ds.param_dtype") + 1] = dtype
    run("score_logps", score)
    cached = str(tmp_path / "cached")
    run("dadpo", _flags(tiny_long_dir, scored, cached, 2, dtype, *teacher))

    got, want = read_metrics(cached)[0], read_metrics(online)[0]
    assert got["teacher_chosen_reward"] != 0.0  # the teacher differs from the policy
    for key in ("loss", "teacher_chosen_reward", "teacher_reject_reward", "chosen_reward"):
        assert got[key] == want[key], key
