"""daDPO: DPO plus a frozen teacher (Eq. 10). Everything but the teacher term is DPOTrainer's."""

from __future__ import annotations

from typing import Tuple

import torch

from openrlhf.models.loss import PreferenceLossOutput
from openrlhf.trainer.dpo_trainer import DPOTrainer

TEACHER_CHOSEN, TEACHER_REJECTED = "teacher_chosen_logp", "teacher_rejected_logp"


class DADPOTrainer(DPOTrainer):
    """``teacher_engine`` scores the teacher's own tokenisation of each pair
    (``teacher_input_ids`` / ``teacher_attention_mask`` / ``teacher_loss_mask``, chosen rows
    first); it may be ``None`` when batches carry cached ``teacher_chosen_logp`` /
    ``teacher_rejected_logp``."""

    def __init__(self, *args, teacher_engine=None, **kw) -> None:
        super().__init__(*args, **kw)
        self.teacher_engine = teacher_engine

    def _teacher_logps(self, batch: dict) -> Tuple[torch.Tensor, torch.Tensor]:
        if TEACHER_CHOSEN in batch:
            return batch[TEACHER_CHOSEN], batch[TEACHER_REJECTED]
        with torch.no_grad():
            seq = self.teacher_engine(
                batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_loss_mask"]
            )[0].sum(-1)
        b = seq.shape[0] // 2
        return seq[:b], seq[b:]

    def _preference_loss(self, batch: dict, policy_chosen, policy_rejected) -> PreferenceLossOutput:
        ref_chosen, ref_rejected = self._reference_logps(batch)
        teacher_chosen, teacher_rejected = self._teacher_logps(batch)
        return self.loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, teacher_chosen, teacher_rejected)
