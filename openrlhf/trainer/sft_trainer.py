"""Supervised fine-tuning on response tokens (dSFT in Algorithm 1)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from openrlhf.datasets.batch import SeqBatch
from openrlhf.logps.forward import forward_tokens
from openrlhf.models.loss import GPTLMLoss
from openrlhf.trainer.base import LoopParts, Trainer


class SFTTrainer(Trainer):
    """Loss = summed response-token NLL / response tokens of the whole optimizer step.

    Normalising by the step's token count (all micro-batches, all ranks) makes the loss
    curve the same however the global batch is split into micro-batches and processes.
    """

    upstream_loss_name = "gpt_loss"  # OpenRLHF logs the SFT loss as train/gpt_loss

    def __init__(self, loop: LoopParts) -> None:
        super().__init__(loop)
        self.loss_fn = GPTLMLoss()
        self._normalizer = None

    def _begin_step(self, micro_batches: List[SeqBatch]) -> None:
        local = float(sum(b.tokens.loss_tokens() for b in micro_batches))
        total = self.strategy.all_reduce(local, op="sum")
        # Each micro-batch loss is divided by the micro-batch count (DeepSpeed does it, or, with
        # dynamic batches, _micro_weight) and gradients are averaged over ranks; undo both so the
        # gradient is that of the global token mean.
        self._normalizer = max(total, 1.0) / (len(micro_batches) * self.strategy.world_size)

    def _micro_weight(self, batch: SeqBatch, micro_batches: List[SeqBatch]) -> float:
        return 1.0 / len(micro_batches)  # the loss is already normalised by the step's tokens

    def _loss_step(self, batch: SeqBatch) -> Tuple[torch.Tensor, Dict[str, float]]:
        logps, _ = forward_tokens(self.engine, batch.tokens)
        loss = self.loss_fn(logps, batch.tokens.loss_mask[:, 1:], normalizer=self._normalizer)
        return loss, {"loss": loss.item()}

    def _eval_step(self, batch: SeqBatch) -> Dict[str, float]:
        with torch.no_grad():
            logps, _ = forward_tokens(self.engine, batch.tokens)
            return {"loss": self.loss_fn(logps, batch.tokens.loss_mask[:, 1:]).item()}
