"""dKTO: KTO on the distillation pairs (teacher responses desirable, student responses undesirable)."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from openrlhf.datasets.batch import PairBatch
from openrlhf.logps.forward import forward_tokens, frozen_pair_logps, tokens_sums
from openrlhf.logps.sources import LogpSource
from openrlhf.trainer.base import LoopParts
from openrlhf.trainer.preference_trainer import PreferenceTrainer


class KTOTrainer(PreferenceTrainer):
    """Batches carry ``mismatched``: each prompt with the responses of the next pair of the micro-batch
    (:func:`openrlhf.datasets.preference_dataset.mismatched_pairs_batch`). The KL reference point z_0 =
    max(0, mean over those mismatched rows of log pi - log ref), averaged over all processes, without
    gradient (the KTO paper's estimate); the reference model (``reference_engine``) runs online for it, even
    when the pairs' reference log-probs are cached (``reference``)."""

    eval_min_rows = 2  # the mismatched pairs of a micro-batch need two pairs

    def __init__(self, loop: LoopParts, *, loss, reference: LogpSource, reference_engine) -> None:
        super().__init__(loop, loss=loss, reference=reference)
        self.reference_engine = reference_engine

    def _reference_point(self, batch: PairBatch) -> torch.Tensor:
        with torch.no_grad():
            mismatched = batch.mismatched
            policy = tokens_sums(forward_tokens(self.engine, mismatched)[0], mismatched)
            ref = frozen_pair_logps(self.reference_engine, mismatched)
            gap = (policy - torch.cat([ref.chosen, ref.rejected])).mean()
            gap = self.strategy.all_reduce(gap, op="mean")
        return gap.clamp(min=0).detach()

    def _loss_step(self, batch: PairBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        policy, _, _ = self._policy_logps(batch)
        out = self.loss_fn(policy, self._reference_logps(batch), self._reference_point(batch))
        return out.loss, out.metrics()
