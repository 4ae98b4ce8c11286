"""DPO (sigmoid, conservative, IPO) with an optional NLL term on the chosen responses."""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import Dataset

from openrlhf.datasets.logp_cache import columns
from openrlhf.models.loss import PairLogps, PreferenceLossOutput
from openrlhf.trainer.base import LoopSettings, Trainer, batch_sequence_sums, forward_batch
from openrlhf.trainer.kd_trainer import response_kl


def cached_pair(batch: dict, kind: str) -> Optional[PairLogps]:
    """The cached ``kind`` (ref / teacher) log-probs a batch carries (see ``score_logps``), or None."""
    chosen, rejected, _ = columns(kind)
    return PairLogps(batch[chosen], batch[rejected]) if chosen in batch else None


def frozen_pair_logps(engine, batch: dict, prefix: str = "") -> PairLogps:
    """Sequence log-probs of a frozen model (reference / teacher) on one tokenisation of a
    chosen-first batch (padded or packed)."""
    with torch.no_grad():
        return PairLogps.split(batch_sequence_sums(forward_batch(engine, batch, prefix)[0], batch, prefix))


class KLTeacher(NamedTuple):
    """dDPO+KL's teacher: a frozen engine of the policy's vocabulary (``vocab_size`` tokens) and the
    weight ``coef`` of KL(teacher || policy) in the loss."""

    engine: Any
    coef: float
    vocab_size: int


class DPOTrainer(Trainer):
    """Batches hold chosen rows first, then rejected rows (``preference_collate``).

    ``ref_engine`` may be ``None`` when the batches carry cached reference log-probs
    (``ref_chosen_logp`` / ``ref_rejected_logp``) or when the loss has no reference term.
    ``kd`` (dDPO+KL): the loss adds ``kd.coef`` x the token-level KL(teacher || policy) on the
    chosen responses (mean over their tokens), the teacher reading the policy's own tokens (one
    vocabulary of ``kd.vocab_size``). The first ten keyword arguments are the loop's
    (:class:`~openrlhf.trainer.base.Trainer`).
    """

    def __init__(
        self,
        *,
        strategy,
        engine,
        tokenizer,
        train_dataset: Dataset,
        collate_fn: Callable,
        settings: LoopSettings,
        logger,
        eval_dataset: Optional[Dataset] = None,
        num_workers: int = 0,
        token_counts: Optional[Callable] = None,
        loss_fn: Callable,
        ref_engine=None,
        nll_loss_coef: float = 0.0,
        kd: Optional[KLTeacher] = None,
    ) -> None:
        super().__init__(
            strategy=strategy,
            engine=engine,
            tokenizer=tokenizer,
            train_dataset=train_dataset,
            collate_fn=collate_fn,
            settings=settings,
            logger=logger,
            eval_dataset=eval_dataset,
            num_workers=num_workers,
            token_counts=token_counts,
        )
        self.ref_engine = ref_engine
        self.loss_fn = loss_fn
        self.nll_loss_coef = nll_loss_coef
        self.kd = kd

    # ---- pieces shared with daDPO ------------------------------------------------------
    def _policy_logps(self, batch: dict) -> Tuple[PairLogps, torch.Tensor, Optional[torch.Tensor]]:
        """(policy log-probs, mean response-token NLL of the chosen rows, KL(teacher || policy)
        on the chosen rows' tokens when dDPO+KL, else None)."""
        if self.kd is not None:
            b = batch["input_ids"].shape[0] // 2
            token_logps, mask, logits = forward_batch(self.engine, batch, response_logits=slice(0, b))
        else:
            token_logps, mask = forward_batch(self.engine, batch)
        policy = PairLogps.split(batch_sequence_sums(token_logps, batch))
        b = policy.chosen.shape[0]
        chosen_tokens = batch_sequence_sums(mask.to(token_logps.dtype), batch)[:b]
        nll = -policy.chosen.sum() / chosen_tokens.sum().clamp(min=1)
        kl = None
        if self.kd is not None:
            with torch.no_grad():
                _, _, t_logits = self.kd.engine(
                    batch["input_ids"][:b],
                    batch["attention_mask"][:b],
                    batch["loss_mask"][:b],
                    response_logits=slice(None),
                )
            kl = response_kl(logits, t_logits, self.kd.vocab_size).mean()
        return policy, nll, kl

    def _reference_logps(self, batch: dict) -> Optional[PairLogps]:
        cached = cached_pair(batch, "ref")
        if cached is not None:
            return cached
        if self.ref_engine is None:
            return None
        return frozen_pair_logps(self.ref_engine, batch)

    def _preference_loss(self, batch: dict, policy: PairLogps) -> PreferenceLossOutput:
        return self.loss_fn(policy, self._reference_logps(batch))

    # ---- the step ----------------------------------------------------------------------
    def _loss_step(self, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        policy, nll, kl = self._policy_logps(batch)
        out = self._preference_loss(batch, policy)
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
