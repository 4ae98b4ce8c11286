"""Response-only log-probs (models/actor.py): the output head runs on the kept hidden states only,
with the same values and gradients as log-softmax over full logits, on every model family and on a
forward replaced the way Liger replaces it."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
)

from openrlhf.models.actor import kept_rows_only, masked_token_logps


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )


def _gemma2_softcapped():
    """Soft-capped final logits (applied after the head inside the model's forward)."""
    torch.manual_seed(0)
    return Gemma2ForCausalLM(
        Gemma2Config(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            final_logit_softcapping=2.0,
            attn_implementation="eager",
        )
    )


def _mixtral():
    torch.manual_seed(0)
    return MixtralForCausalLM(
        MixtralConfig(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            output_router_logits=True,
        )
    )


def _batch():
    """Two left-padded rows whose responses start at different positions."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 12), generator=g)
    attn = torch.ones(2, 12, dtype=torch.long)
    attn[1, :3] = 0
    ids[1, :3] = 0
    loss_mask = torch.zeros(2, 12, dtype=torch.long)
    loss_mask[0, 7:] = 1
    loss_mask[1, 5:11] = 1
    return ids, attn, loss_mask


def _reference(model, ids, attn, loss_mask):
    """log p(token | prefix) from the full [B, T, V] logits, zeroed outside the response."""
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    lp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp * loss_mask[:, 1:]


@pytest.mark.parametrize("build", [_llama, _gemma2_softcapped, _mixtral], ids=["llama", "gemma2-softcap", "mixtral"])
def test_response_logps_equal_full_logits_values_and_gradients(build):
    model = build()
    ids, attn, loss_mask = _batch()
    ours, mask = masked_token_logps(model, ids, attn, loss_mask)
    assert torch.equal(mask, loss_mask[:, 1:].bool())
    (ours.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref = _reference(model, ids, attn, loss_mask)
    ref.sum().backward()
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    assert ours[0, :6].abs().sum() == 0 and ours[1, 10:].abs().sum() == 0  # zero outside the response
    for n, p in model.named_parameters():
        if p.grad is not None and n in grads:
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n


def test_head_sees_only_kept_rows_and_hook_is_removed():
    model = _llama()
    ids, attn, loss_mask = _batch()
    keep = torch.zeros_like(loss_mask, dtype=torch.bool)
    keep[:, :-1] = loss_mask[:, 1:].bool()
    seen = []
    h = model.lm_head.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    with kept_rows_only(model, keep):
        out = model(input_ids=ids, attention_mask=attn, use_cache=False)
    h.remove()
    assert seen == [(1, int(keep.sum()), 32)]
    assert out.logits.shape == (1, int(keep.sum()), 97)
    # outside the context the model is the plain model again
    assert model(input_ids=ids, attention_mask=attn, use_cache=False).logits.shape == (2, 12, 97)


def _liger_style_forward(
    self, input_ids=None, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0, **kw
):
    """The shape of the forward Liger installs (liger_kernel.transformers.model.llama.lce_forward,
    0.8.5, labels None): decoder, then ``hidden[:, slice_indices, :]`` with an int or a tensor
    ``logits_to_keep``, then the head. A boolean [B, T] ``logits_to_keep`` is an IndexError there."""
    hidden = self.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=use_cache
    ).last_hidden_state
    slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return types.SimpleNamespace(logits=self.lm_head(hidden[:, slice_indices, :]), aux_loss=None)


def test_liger_style_forward_trains_like_the_plain_model():
    ids, attn, loss_mask = _batch()
    keep = torch.zeros_like(loss_mask, dtype=torch.bool)
    keep[:, :-1] = loss_mask[:, 1:].bool()
    patched = _llama()
    patched.forward = types.MethodType(_liger_style_forward, patched)
    with pytest.raises(IndexError):  # what a boolean logits_to_keep did to such a forward
        patched(input_ids=ids, attention_mask=attn, logits_to_keep=keep)
    plain = _llama()
    losses = {}
    for name, model in (("plain", plain), ("patched", patched)):
        before = model.lm_head.weight.detach().clone()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        curve = []
        for _ in range(3):
            lp, mask = masked_token_logps(model, ids, attn, loss_mask)
            loss = -(lp.sum() / mask.sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        assert not torch.equal(before, model.lm_head.weight)  # parameters moved
        assert curve[-1] < curve[0]
        losses[name] = curve
    assert losses["plain"] == pytest.approx(losses["patched"], abs=1e-6)


@pytest.mark.parametrize("packed_forward", ["auto", "one_call", "per_sequence"])
def test_packed_rows_per_sequence_equal_padded(packed_forward):
    """A packed row (no attention mask, position ids restarting) gives each sequence's padded values, run
    one sequence at a time or in one forward (sdpa with the block-diagonal causal mask transformers
    builds from the restarting position ids: the second sequence must not see the first)."""
    model = _llama()
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(3, 97, (1, 7), generator=g), torch.randint(3, 97, (1, 5), generator=g)
    ma, mb = torch.tensor([[0, 0, 0, 1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1]])
    packed_ids = torch.cat([a, b], 1)
    packed_mask = torch.cat([ma, mb], 1)
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
    packed, pmask = masked_token_logps(
        model, packed_ids, None, packed_mask, position_ids=pos, packed_forward=packed_forward
    )
    sa, _ = masked_token_logps(model, a, torch.ones_like(a), ma)
    sb, _ = masked_token_logps(model, b, torch.ones_like(b), mb)
    # the packed row's log-prob at the junction (predicting b's first token from a) is not a response token
    assert torch.allclose(packed[0, :6], sa[0], atol=1e-5)
    assert torch.allclose(packed[0, 7:], sb[0], atol=1e-5)
    assert not pmask[0, 6]


def test_packed_rows_run_one_sequence_at_a_time_on_cpu_unless_asked():
    """auto on a CPU: one forward per sequence (the fastest layout there); one_call: one forward."""
    model = _llama()
    calls = []
    model.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    ids = torch.randint(3, 97, (1, 12))
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
    for mode, forwards in (("auto", 2), ("per_sequence", 2), ("one_call", 1)):
        calls.clear()
        masked_token_logps(model, ids, None, torch.ones_like(ids), position_ids=pos, packed_forward=mode)
        assert len(calls) == forwards, mode


def test_packed_forward_choice_is_checked():
    model = _llama()
    ids = torch.randint(3, 97, (1, 6))
    with pytest.raises(ValueError, match="packed_forward must be one of"):
        masked_token_logps(
            model, ids, None, torch.ones_like(ids), position_ids=torch.arange(6)[None], packed_forward="fast"
        )


def test_packed_flash_path_gets_sequence_boundaries_once_per_batch():
    """With a flash-attention implementation a packed row runs as one forward; its varlen arguments are
    computed once (equal to transformers' own derivation, the length a Python int, so no host sync per
    layer) and every attention layer receives them. The attention here is a CPU stand-in registered under
    a flash_attention name that attends within each [cu[i], cu[i+1]) span; the log-probs equal the
    padded per-sequence ones."""
    from transformers import AttentionInterface
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    from openrlhf.models.actor import varlen_kwargs

    pos = torch.cat([torch.arange(7), torch.arange(5), torch.arange(9)])[None]
    got = varlen_kwargs(pos)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(pos)
    assert torch.equal(got["cu_seq_lens_q"], cu_q) and torch.equal(got["cu_seq_lens_k"], cu_k)
    assert got["cu_seq_lens_q"].dtype == torch.int32 and got["cu_seq_lens_q"].tolist() == [0, 7, 12, 21]
    assert got["max_length_q"] == got["max_length_k"] == int(max_q) == int(max_k) == 9
    assert type(got["max_length_q"]) is int

    calls = []

    def standin(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        calls.append({k: kw.get(k) for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")})
        cu = kw["cu_seq_lens_q"].tolist()
        rep = query.shape[1] // key.shape[1]
        k, v = key.repeat_interleave(rep, 1), value.repeat_interleave(rep, 1)
        spans = zip(cu[:-1], cu[1:], strict=True)
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scaling
                )
                for s, e in spans
            ],
            dim=2,
        )
        return out.transpose(1, 2).contiguous(), None

    name = "flash_attention_cpu_standin"
    AttentionInterface.register(name, standin)
    try:
        model = _llama()
        model.config._attn_implementation = name
        plain = _llama()
        g = torch.Generator().manual_seed(3)
        a, b = torch.randint(3, 97, (1, 7), generator=g), torch.randint(3, 97, (1, 5), generator=g)
        ma, mb = torch.tensor([[0, 0, 0, 1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1]])
        pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
        packed, _ = masked_token_logps(model, torch.cat([a, b], 1), None, torch.cat([ma, mb], 1), position_ids=pos)
        sa, _ = masked_token_logps(plain, a, torch.ones_like(a), ma)
        sb, _ = masked_token_logps(plain, b, torch.ones_like(b), mb)
    finally:
        AttentionInterface._global_mapping.pop(name, None)
    assert len(calls) == 2  # one forward, both layers
    for c in calls:
        assert c["cu_seq_lens_q"].tolist() == [0, 7, 12] and c["cu_seq_lens_k"] is c["cu_seq_lens_q"]
        assert c["max_length_q"] == c["max_length_k"] == 7 and type(c["max_length_q"]) is int
    assert calls[0]["cu_seq_lens_q"] is calls[1]["cu_seq_lens_q"]  # computed once, shared by the layers
    assert torch.allclose(packed[0, :6], sa[0], atol=1e-5) and torch.allclose(packed[0, 7:], sb[0], atol=1e-5)
