"""dSFT+KL: SFT on the teacher's responses plus the token-level KL to the teacher (paper Eq. 2)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from openrlhf.datasets.batch import SeqBatch
from openrlhf.logps.forward import forward_tokens
from openrlhf.models.loss import token_kl
from openrlhf.trainer.base import LoopParts
from openrlhf.trainer.sft_trainer import SFTTrainer


def response_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token KL(teacher || student) [N] over the first ``vocab_size`` logits (the shared
    tokenizer's tokens; rows past it are embedding padding). Both logits are ``[N, V_model]``."""
    for who, logits in (("student", student_logits), ("teacher", teacher_logits)):
        if logits.shape[-1] < vocab_size:
            raise ValueError(
                f"the {who} model has {logits.shape[-1]} logits, fewer than the {vocab_size} tokens "
                "of the shared tokenizer"
            )
    return token_kl(student_logits[:, :vocab_size], teacher_logits[:, :vocab_size])


class KDTrainer(SFTTrainer):
    """Loss = (response-token NLL + ``kd_coef`` x KL(teacher || student) summed over the same
    tokens) / response tokens of the optimizer step; the teacher (a frozen engine) reads the
    student's own tokens, so the two must share a vocabulary (checked before training).
    ``vocab_size``: the tokens of that shared vocabulary."""

    def __init__(self, loop: LoopParts, *, teacher_engine, kd_coef: float, vocab_size: int) -> None:
        super().__init__(loop)
        self.teacher_engine = teacher_engine
        self.kd_coef = kd_coef
        self.vocab_size = vocab_size

    def _terms(self, batch: SeqBatch, normalizer) -> Tuple[torch.Tensor, torch.Tensor]:
        every = slice(None)
        logps, _, s_logits = forward_tokens(self.engine, batch.tokens, response_logits=every)
        nll = self.loss_fn(logps, batch.tokens.loss_mask[:, 1:], normalizer=normalizer)
        with torch.no_grad():
            _, mask, t_logits = forward_tokens(self.teacher_engine, batch.tokens, response_logits=every)
        kl_sum = response_kl(s_logits, t_logits, self.vocab_size).sum()
        denom = normalizer if normalizer is not None else mask.sum().clamp(min=1).item()
        return nll, kl_sum / denom

    def _loss_step(self, batch: SeqBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        nll, kl = self._terms(batch, self._normalizer)
        loss = nll + self.kd_coef * kl
        return loss, {"loss": loss.item(), "nll_loss": nll.item(), "kd_loss": kl.item()}

    def _eval_step(self, batch: SeqBatch) -> Dict[str, float]:
        with torch.no_grad():
            nll, kl = self._terms(batch, None)
            return {"loss": (nll + self.kd_coef * kl).item(), "nll_loss": nll.item(), "kd_loss": kl.item()}
