"""daDPO: DPO plus a frozen teacher (Eq. 10). Everything but the teacher term is DPOTrainer's."""

from __future__ import annotations

from openrlhf.models.loss import PairLogps, PreferenceLossOutput
from openrlhf.trainer.dpo_trainer import DPOTrainer, cached_pair, frozen_pair_logps


class DADPOTrainer(DPOTrainer):
    """``teacher_engine`` scores the teacher's own tokenisation of each pair
    (``teacher_input_ids`` / ``teacher_attention_mask`` / ``teacher_loss_mask``, chosen rows
    first); it may be ``None`` when batches carry cached ``teacher_chosen_logp`` /
    ``teacher_rejected_logp``."""

    def __init__(self, *args, teacher_engine=None, **kw) -> None:
        super().__init__(*args, **kw)
        self.teacher_engine = teacher_engine

    def _teacher_logps(self, batch: dict) -> PairLogps:
        cached = cached_pair(batch, "teacher")
        if cached is not None:
            return cached
        return frozen_pair_logps(self.teacher_engine, batch["teacher_input_ids"], batch["teacher_attention_mask"],
                                 batch["teacher_loss_mask"])

    def _preference_loss(self, batch: dict, policy: PairLogps) -> PreferenceLossOutput:
        return self.loss_fn(policy, self._reference_logps(batch), self._teacher_logps(batch))
