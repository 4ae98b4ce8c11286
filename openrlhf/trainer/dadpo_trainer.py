"""daDPO: DPO plus frozen teacher(s) (Eq. 10). Everything but the teacher terms is DPOTrainer's."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from openrlhf.models.loss import PairLogps, PreferenceLossOutput
from openrlhf.trainer.dpo_trainer import DPOTrainer, cached_pair, frozen_pair_logps


class DADPOTrainer(DPOTrainer):
    """``teachers`` are the teachers' names in order (``teacher``, ``teacher_2``, ...; see
    :func:`openrlhf.models.loss.teacher_name`). Each is scored on its own tokenisation of the
    pair (``<name>_input_ids`` / ``_attention_mask`` / ``_loss_mask``, chosen rows first) by
    ``teacher_engines[name]``, or read from the cached ``<name>_chosen_logp`` /
    ``<name>_rejected_logp`` the batch carries (then its engine may be absent). Every other
    keyword argument is :class:`DPOTrainer`'s."""

    def __init__(
        self, *, teachers: Sequence[str], teacher_engines: Optional[Dict[str, object]] = None, **dpo_kwargs
    ) -> None:
        super().__init__(**dpo_kwargs)
        self.teachers = list(teachers)
        self.teacher_engines = dict(teacher_engines or {})

    def _teacher_logps(self, batch: dict) -> List[PairLogps]:
        out = []
        for name in self.teachers:
            cached = cached_pair(batch, name)
            if cached is None:
                cached = frozen_pair_logps(self.teacher_engines[name], batch, f"{name}_")
            out.append(cached)
        return out

    def _preference_loss(self, batch: dict, policy: PairLogps) -> PreferenceLossOutput:
        return self.loss_fn(policy, self._reference_logps(batch), self._teacher_logps(batch))
