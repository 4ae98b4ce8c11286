"""dKTO: KTO on the distillation pairs (teacher responses desirable, student responses undesirable)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from openrlhf.trainer.base import batch_sequence_sums, forward_batch
from openrlhf.trainer.dpo_trainer import DPOTrainer, frozen_pair_logps


class KTOTrainer(DPOTrainer):
    """Batches are preference batches plus ``kl_input_ids`` / ``kl_attention_mask`` /
    ``kl_loss_mask``: each prompt with the responses of the next pair of the micro-batch
    (:func:`openrlhf.datasets.preference_dataset.mismatched_pairs_batch`). The KL reference
    point z_0 = max(0, mean over those mismatched rows of log pi - log ref), averaged over
    all processes, without gradient (the KTO paper's estimate); the reference model runs
    online for it."""

    def _reference_point(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            policy = batch_sequence_sums(forward_batch(self.engine, batch, "kl_")[0], batch, "kl_")
            ref = frozen_pair_logps(self.ref_engine, batch, "kl_")
            gap = (policy - torch.cat([ref.chosen, ref.rejected])).mean()
            gap = self.strategy.all_reduce(gap, op="mean")
        return gap.clamp(min=0).detach()

    def _loss_step(self, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        policy, _, _ = self._policy_logps(batch)
        reference = self._reference_logps(batch)
        out = self.loss_fn(policy, reference, self._reference_point(batch))
        return out.loss, out.metrics()

    def _eval_step(self, batch: dict) -> Dict[str, float]:
        with torch.no_grad():
            return self._loss_step(batch)[1]
