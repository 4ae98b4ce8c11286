"""DPO (sigmoid, conservative, IPO) with an optional NLL term on the chosen responses."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from openrlhf.datasets.logp_cache import columns
from openrlhf.models.loss import PairLogps, PreferenceLossOutput
from openrlhf.trainer.base import Trainer


def cached_pair(batch: dict, kind: str) -> Optional[PairLogps]:
    """The cached ``kind`` (ref / teacher) log-probs a batch carries (see ``score_logps``), or None."""
    chosen, rejected, _ = columns(kind)
    return PairLogps(batch[chosen], batch[rejected]) if chosen in batch else None


def frozen_pair_logps(engine, input_ids, attention_mask, loss_mask) -> PairLogps:
    """Sequence log-probs of a frozen model (reference / teacher) on a chosen-first batch."""
    with torch.no_grad():
        return PairLogps.split(engine(input_ids, attention_mask, loss_mask)[0].sum(-1))


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
    def _policy_logps(self, batch: dict) -> Tuple[PairLogps, torch.Tensor]:
        """(policy log-probs, mean response-token NLL of the chosen rows)."""
        token_logps, mask = self.engine(batch["input_ids"], batch["attention_mask"], batch["loss_mask"])
        policy = PairLogps.split(token_logps.sum(-1))
        b = policy.chosen.shape[0]
        nll = -token_logps[:b].sum() / mask[:b].sum().clamp(min=1)
        return policy, nll

    def _reference_logps(self, batch: dict) -> Optional[PairLogps]:
        cached = cached_pair(batch, "ref")
        if cached is not None:
            return cached
        if self.ref_engine is None:
            return None
        return frozen_pair_logps(self.ref_engine, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])

    def _preference_loss(self, batch: dict, policy: PairLogps) -> PreferenceLossOutput:
        return self.loss_fn(policy, self._reference_logps(batch))

    # ---- the step ----------------------------------------------------------------------
    def _loss_step(self, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        policy, nll = self._policy_logps(batch)
        out = self._preference_loss(batch, policy)
        loss = out.loss + self.nll_loss_coef * nll if self.nll_loss_coef > 0 else out.loss
        metrics = out.metrics()
        metrics["preference_loss"] = metrics["loss"]
        metrics["loss"] = loss.item()
        metrics["nll_loss"] = nll.item()
        return loss, metrics
