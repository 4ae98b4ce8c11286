"""Actor: an HF causal LM that returns log-probs of response tokens.

``loss_mask`` is aligned with ``input_ids`` (True where the token is a response token);
the log-prob of token t is read from the logits at position t-1.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn


def token_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, chunk_rows: int = 4) -> torch.Tensor:
    """log p(input_ids[:, t] | < t) for t >= 1, shape [B, T-1], computed in fp32.

    Works a few rows at a time so a large vocabulary never materialises a full fp32
    log-softmax of the whole batch.
    """
    labels = input_ids[:, 1:]
    out = []
    for start in range(0, logits.shape[0], chunk_rows):
        lg = logits[start : start + chunk_rows, :-1, :].float()
        picked = torch.gather(lg, -1, labels[start : start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(lg, dim=-1))
    return torch.cat(out, dim=0)


def masked_token_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       loss_mask: torch.Tensor, response_logits: Optional[slice] = None):
    """(token_logps [B, T-1] zeroed outside the response, response mask [B, T-1]).

    ``response_logits`` (a slice of rows, e.g. ``slice(0, B)``): also return the logits that
    predict the response tokens of those rows, ``[N, V]`` in row-major order (for a token-level
    KL), as a third item."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logps = token_logps_from_logits(logits, input_ids)
    mask = loss_mask[:, 1:].bool()
    if response_logits is None:
        return logps * mask, mask
    return logps * mask, mask, logits[response_logits, :-1][mask[response_logits]]


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                response_logits: Optional[slice] = None):
        """(masked token log-probs [B, T-1], response mask [B, T-1][, response logits [N, V]]);
        see :func:`masked_token_logps`."""
        return masked_token_logps(self.model, input_ids, attention_mask, loss_mask, response_logits)

    # HF-style helpers used when saving
    @property
    def config(self):
        return self.model.config

    def gradient_checkpointing_enable(self, **kw) -> None:
        self.model.gradient_checkpointing_enable(**kw)
