"""Actor: an HF causal LM that returns log-probs of response tokens.

``loss_mask`` is aligned with ``input_ids`` (True where the token is a response token);
the log-prob of token t is read from the logits at position t-1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


class _SelectedLogps(torch.autograd.Function):
    """log softmax(logits)[label] for rows of ``logits`` [N, V], in fp32, a chunk of rows at a time.

    Neither direction holds an fp32 copy of the whole [N, V] logits (the backward recomputes the
    softmax chunk by chunk into the gradient), which is the memory peak of a step for large
    vocabularies (Qwen: 152k) and long rows."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for s in range(0, logits.shape[0], chunk):
            lg = logits[s : s + chunk].float()
            out[s : s + chunk] = lg.gather(-1, labels[s : s + chunk, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.chunk):
            g_out = grad_out[s : s + ctx.chunk, None].float()
            g = torch.softmax(logits[s : s + ctx.chunk].float(), dim=-1).mul_(-g_out)
            g.scatter_add_(-1, labels[s : s + ctx.chunk, None], g_out)
            grad[s : s + ctx.chunk] = g.to(grad.dtype)
        return grad, None, None


def selected_logps(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log p(label) per row of ``logits`` [N, V] (fp32 [N]); see :class:`_SelectedLogps`."""
    return _SelectedLogps.apply(logits, labels, chunk)


def token_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | < t) for t >= 1 from full logits [B, T, V], shape [B, T-1], fp32."""
    b, t, v = logits.shape
    flat = selected_logps(logits[:, :-1].reshape(-1, v), input_ids[:, 1:].reshape(-1))
    return flat.view(b, t - 1)


def sequence_sums(token_logps: torch.Tensor, seq_index: Optional[torch.Tensor] = None,
                  n_seqs: Optional[int] = None) -> torch.Tensor:
    """Per-sequence sums of token log-probs [B, T-1]: the row sums of a padded batch, or, for a
    packed batch (one row, ``seq_index`` [1, T]), the sums of each of its ``n_seqs`` sequences.

    Accumulated in float64, so both layouts round the same sum the same way (in fp32 a sum of a
    few hundred log-probs of magnitude ~300 would differ by its last bit, ~3e-5, between them)."""
    values = token_logps.double()
    if seq_index is None:
        return values.sum(-1).to(token_logps.dtype)
    out = torch.zeros(n_seqs, dtype=torch.float64, device=token_logps.device)
    return out.index_add(0, seq_index[:, 1:].reshape(-1), values.reshape(-1)).to(token_logps.dtype)


def masked_token_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       loss_mask: torch.Tensor, response_logits: Optional[slice] = None,
                       position_ids: Optional[torch.Tensor] = None):
    """(token_logps [B, T-1] zeroed outside the response, response mask [B, T-1]).

    Only the logits that predict response tokens are computed (the model's ``logits_to_keep``),
    and their log-probs are taken a chunk at a time (:func:`selected_logps`). A packed batch
    (``attention_mask`` None, ``position_ids`` restarting per sequence) works the same way.
    ``response_logits`` (a slice of rows of a padded batch, e.g. ``slice(0, B)``): also return the
    logits that predict the response tokens of those rows, ``[N, V]`` in row-major order (for a
    token-level KL), as a third item."""
    mask = loss_mask[:, 1:].bool()
    keep = torch.zeros_like(loss_mask, dtype=torch.bool)
    keep[:, :-1] = mask
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                logits_to_keep=keep)
    logits = out.logits.reshape(-1, out.logits.shape[-1])
    n = int(mask.sum())
    if logits.shape[0] != n:  # a model that ignores a boolean logits_to_keep: select the positions here
        logits = out.logits[:, :-1][mask]
    picked = selected_logps(logits, input_ids[:, 1:][mask])
    token_logps = picked.new_zeros(mask.shape).masked_scatter(mask, picked)
    if response_logits is None:
        return token_logps, mask
    counts = torch.cat([mask.new_zeros(1, dtype=torch.long), mask.sum(-1).cumsum(0)]).tolist()
    rows = range(mask.shape[0])[response_logits]
    start, stop = (counts[rows.start], counts[rows.stop]) if len(rows) else (0, 0)
    return token_logps, mask, logits[start:stop]


def check_attn_implementation(name: str) -> None:
    if name == "flash_attention_2":
        from openrlhf.utils.errors import require_package

        require_package("flash_attn", "--ds.attn_implementation flash_attention_2 (use sdpa without it)")


class Actor(nn.Module):
    """Wraps an HF causal LM (``self.model``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
        what: str = "--model.model_name_or_path",
    ) -> "Actor":
        from transformers import AutoModelForCausalLM

        check_attn_implementation(attn_implementation)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
        except (OSError, ValueError) as e:
            from openrlhf.utils.errors import UserError

            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{what}: cannot load a model from {path!r}: {first}") from None
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return cls(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], loss_mask: torch.Tensor,
                response_logits: Optional[slice] = None, position_ids: Optional[torch.Tensor] = None):
        """(masked token log-probs [B, T-1], response mask [B, T-1][, response logits [N, V]]);
        see :func:`masked_token_logps`."""
        return masked_token_logps(self.model, input_ids, attention_mask, loss_mask, response_logits, position_ids)

    # HF-style helpers used when saving
    @property
    def config(self):
        return self.model.config

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.model.gradient_checkpointing_enable(**kw)
