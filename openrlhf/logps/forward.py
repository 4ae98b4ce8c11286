"""One forward of an Actor on one tokenisation (:class:`~openrlhf.datasets.batch.Tokens`), and its sums."""

from __future__ import annotations

import torch

from openrlhf.datasets.batch import Tokens
from openrlhf.models.actor import sequence_sums
from openrlhf.models.loss import PairLogps


def forward_tokens(engine, tokens: Tokens, **kw):
    """Run an Actor (or its DeepSpeed engine) on a padded or packed tokenisation; returns what the Actor
    does: (token log-probs [N, T-1], response mask [N, T-1][, response logits])."""
    return engine(tokens.input_ids, tokens.attention_mask, tokens.loss_mask, position_ids=tokens.position_ids, **kw)


def tokens_sums(values: torch.Tensor, tokens: Tokens) -> torch.Tensor:
    """Per-sequence sums [N] of per-token values [.., T-1] of a padded or packed tokenisation."""
    return sequence_sums(values, tokens.seq_index, tokens.n_seqs)


def frozen_pair_logps(engine, tokens: Tokens) -> PairLogps:
    """Sequence log-probs of a frozen model on a chosen-first pair tokenisation (padded or packed)."""
    with torch.no_grad():
        return PairLogps.split(tokens_sums(forward_tokens(engine, tokens)[0], tokens))
