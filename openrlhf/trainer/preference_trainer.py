"""The preference trainer: DPO, IPO, conservative DPO, rDPO, daDPO and dDPO+KL are one loop step with
another loss and other log-prob sources.

One step on a :class:`~openrlhf.datasets.batch.PairBatch`: the policy's sequence log-probs of the pairs,
each frozen model's from its :class:`~openrlhf.logps.sources.LogpSource` (the reference, and the teachers
in order), then ``loss(policy, reference, teachers)``; plus, when asked, the NLL of the chosen responses
(``--model.nll_loss_coef``) and dDPO+KL's token-level KL to a teacher of the policy's vocabulary.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch

from openrlhf.datasets.batch import PairBatch
from openrlhf.logps.forward import forward_tokens, tokens_sums
from openrlhf.logps.sources import LogpSource
from openrlhf.models.loss import PairLogps
from openrlhf.trainer.base import LoopParts, Trainer
from openrlhf.trainer.kd_trainer import response_kl


class KLTeacher(NamedTuple):
    """dDPO+KL's teacher: a frozen engine of the policy's vocabulary (``vocab_size`` tokens) and the
    weight ``coef`` of KL(teacher || policy) in the loss."""

    engine: Any
    coef: float
    vocab_size: int


class PreferenceTrainer(Trainer):
    """``loss``: a preference loss of :mod:`openrlhf.models.loss` called as ``loss(policy, reference,
    teachers)`` (:class:`~openrlhf.models.loss.DPOLoss` takes no teachers); ``reference``: the reference's
    source, or None when the loss has no reference term (rDPO); ``teachers``: one source per teacher, in
    order. ``kd`` (dDPO+KL): the loss adds ``kd.coef`` x the token-level KL(teacher || policy) on the chosen
    responses (mean over their tokens), the teacher reading the policy's own tokens."""

    def __init__(
        self,
        loop: LoopParts,
        *,
        loss,
        reference: Optional[LogpSource],
        teachers: Sequence[LogpSource] = (),
        nll_loss_coef: float = 0.0,
        kd: Optional[KLTeacher] = None,
    ) -> None:
        super().__init__(loop)
        self.loss_fn = loss
        self.reference = reference
        self.teachers = list(teachers)
        self.nll_loss_coef = nll_loss_coef
        self.kd = kd

    def _policy_logps(self, batch: PairBatch) -> Tuple[PairLogps, torch.Tensor, Optional[torch.Tensor]]:
        """(policy log-probs, mean response-token NLL of the chosen rows, KL(teacher || policy) on the
        chosen rows' tokens when dDPO+KL, else None)."""
        tokens = batch.tokens
        b = batch.rows
        if self.kd is not None:
            token_logps, mask, logits = forward_tokens(self.engine, tokens, response_logits=slice(0, b))
        else:
            token_logps, mask = forward_tokens(self.engine, tokens)
        policy = PairLogps.split(tokens_sums(token_logps, tokens))
        chosen_tokens = tokens_sums(mask.to(token_logps.dtype), tokens)[:b]
        nll = -policy.chosen.sum() / chosen_tokens.sum().clamp(min=1)
        kl = None
        if self.kd is not None:
            with torch.no_grad():
                _, _, t_logits = self.kd.engine(
                    tokens.input_ids[:b], tokens.attention_mask[:b], tokens.loss_mask[:b], response_logits=slice(None)
                )
            kl = response_kl(logits, t_logits, self.kd.vocab_size).mean()
        return policy, nll, kl

    def _reference_logps(self, batch: PairBatch) -> Optional[PairLogps]:
        return None if self.reference is None else self.reference.pair_logps(batch)

    def _loss_step(self, batch: PairBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        policy, nll, kl = self._policy_logps(batch)
        reference = self._reference_logps(batch)  # the frozen forwards in one order: reference, then teachers
        teachers = [t.pair_logps(batch) for t in self.teachers]
        out = self.loss_fn(policy, reference, teachers)
        loss = out.loss + self.nll_loss_coef * nll if self.nll_loss_coef > 0 else out.loss
        if kl is not None:
            loss = loss + self.kd.coef * kl
        metrics = out.metrics()
        metrics["preference_loss"] = metrics["loss"]
        metrics["loss"] = loss.item()
        metrics["nll_loss"] = nll.item()
        if kl is not None:
            metrics["kd_loss"] = kl.item()
        return loss, metrics
