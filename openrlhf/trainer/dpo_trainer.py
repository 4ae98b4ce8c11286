"""DPO (sigmoid, conservative, IPO) with an optional NLL term on the chosen responses."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from openrlhf.models.loss import PreferenceLossOutput
from openrlhf.trainer.base import Trainer

REF_CHOSEN, REF_REJECTED = "ref_chosen_logp", "ref_rejected_logp"


class DPOTrainer(Trainer):
    """Batches hold chosen rows first, then rejected rows (``preference_collate``).

    ``ref_engine`` may be ``None`` when the batches carry cached reference log-probs
    (``ref_chosen_logp`` / ``ref_rejected_logp``) or when the loss has no reference term.
    """

    def __init__(self, *args, ref_engine=None, loss_fn=None, nll_loss_coef: float = 0.0, **kw) -> None:
        super().__init__(*args, **kw)
        self.ref_engine = ref_engine
        self.loss_fn = loss_fn
        self.nll_loss_coef = nll_loss_coef

    # ---- pieces shared with daDPO ------------------------------------------------------
    def _policy_logps(self, batch: dict):
        """(chosen [B], rejected [B], mean response-token NLL of the chosen rows)."""
        token_logps, mask = self.engine(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        seq = token_logps.sum(-1)
        b = seq.shape[0] // 2
        nll = -token_logps[:b].sum() / mask[:b].sum().clamp(min=1)
        return seq[:b], seq[b:], nll

    def _reference_logps(self, batch: dict) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if REF_CHOSEN in batch:
            return batch[REF_CHOSEN], batch[REF_REJECTED]
        if self.ref_engine is None:
            return None, None
        with torch.no_grad():
            seq = self.ref_engine(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0].sum(-1)
        b = seq.shape[0] // 2
        return seq[:b], seq[b:]

    def _preference_loss(self, batch: dict, policy_chosen, policy_rejected) -> PreferenceLossOutput:
        ref_chosen, ref_rejected = self._reference_logps(batch)
        return self.loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected)

    # ---- the step ----------------------------------------------------------------------
    def _loss_step(self, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        chosen, rejected, nll = self._policy_logps(batch)
        out = self._preference_loss(batch, chosen, rejected)
        loss = out.loss + self.nll_loss_coef * nll if self.nll_loss_coef > 0 else out.loss
        metrics = out.metrics()
        metrics["preference_loss"] = metrics["loss"]
        metrics["loss"] = loss.item()
        metrics["nll_loss"] = nll.item()
        return loss, metrics
