"""Supervised fine-tuning on response tokens (dSFT in Algorithm 1)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

from openrlhf.models.loss import GPTLMLoss
from openrlhf.trainer.base import LoopSettings, Trainer, forward_batch


class SFTTrainer(Trainer):
    """Loss = summed response-token NLL / response tokens of the whole optimizer step.

    Normalising by the step's token count (all micro-batches, all ranks) makes the loss
    curve the same however the global batch is split into micro-batches and processes.
    The keyword arguments are the loop's (:class:`~openrlhf.trainer.base.Trainer`).
    """

    upstream_loss_name = "gpt_loss"  # OpenRLHF logs the SFT loss as train/gpt_loss

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
        )
        self.loss_fn = GPTLMLoss()
        self._normalizer = None

    def _begin_step(self, micro_batches: List[dict]) -> None:
        local = float(sum(int(b["loss_mask"][:, 1:].sum()) for b in micro_batches))
        total = self.strategy.all_reduce(local, op="sum")
        # Each micro-batch loss is divided by the micro-batch count (DeepSpeed does it, or, with
        # dynamic batches, _micro_weight) and gradients are averaged over ranks; undo both so the
        # gradient is that of the global token mean.
        self._normalizer = max(total, 1.0) / (len(micro_batches) * self.strategy.world_size)

    def _micro_weight(self, batch: dict, micro_batches: List[dict]) -> float:
        return 1.0 / len(micro_batches)  # the loss is already normalised by the step's tokens

    def _loss_step(self, batch: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        logps, _ = forward_batch(self.engine, batch)
        loss = self.loss_fn(logps, batch["loss_mask"][:, 1:], normalizer=self._normalizer)
        return loss, {"loss": loss.item()}

    def _eval_step(self, batch: dict) -> Dict[str, float]:
        with torch.no_grad():
            logps, _ = forward_batch(self.engine, batch)
            return {"loss": self.loss_fn(logps, batch["loss_mask"][:, 1:]).item()}
