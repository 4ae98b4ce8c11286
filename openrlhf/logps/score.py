"""Scoring pairs with a frozen model outside the training loop: what ``score_logps`` caches and what the
Ray trainers' frozen groups compute, the same sums the training process computes online."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import torch

from openrlhf.datasets.preference_dataset import PreferenceDataset, preference_collate
from openrlhf.datasets.tokenizer import pad_token_id

from .forward import forward_tokens, tokens_sums
from .frozen import FrozenModel


def frozen_dataset(model: FrozenModel, rows: Sequence[dict], tokenizer, data_cfg, policy_path: str, source: str):
    """The pairs of ``rows`` as ``model`` scores them: the reference in the policy's tokenisation
    (``tokenizer``, cut to --data.max_len, as the policy is trained), a teacher in its own (its renderer:
    its tokenizer and chat template) over whole responses."""
    if not model.own_tokens:
        return PreferenceDataset(rows, tokenizer, data_cfg, source, model_path=policy_path)
    # The teachers score whole responses: no length cap on their side.
    uncapped = dataclasses.replace(data_cfg, max_len=1 << 30)
    return PreferenceDataset(rows, model.renderer.tokenizer, uncapped, source, renderer=model.renderer)


def score_pairs(
    strategy, model, ds, positions: List[int], micro_batch_size: int, on_batch=None
) -> Dict[int, Tuple[float, float]]:
    """Sequence log-probs (summed over the response tokens) of the pairs at ``positions`` of the preference
    dataset ``ds`` under the frozen engine ``model``, the positions shared out between the processes
    (collective: every process takes part). Returns this process's share as {row index: (chosen,
    rejected)}; ``on_batch(scores)`` is called with each micro-batch's share as it is done."""
    out: Dict[int, Tuple[float, float]] = {}
    if not positions:
        return out
    world, mb = strategy.world_size, micro_batch_size
    # Every process runs the same number of forwards (ZeRO-3 gathers weights collectively):
    # pad the work list with repeats that are computed but not returned.
    per_round = world * mb
    n = -(-len(positions) // per_round) * per_round
    padded = list(positions) + [positions[-1]] * (n - len(positions))
    mine = [(padded[k], k < len(positions)) for k in range(strategy.rank, n, world)]
    pad_id = pad_token_id(ds.renderer.tokenizer)
    dev = strategy.device
    with torch.no_grad():
        for start in range(0, len(mine), mb):
            chunk = mine[start : start + mb]
            items = [ds[i] for i, _ in chunk]
            tokens = preference_collate(items, pad_id).tokens.to(dev)
            # Summed as the trainer sums its online log-probs (float64 accumulation, one rounding).
            seq = tokens_sums(forward_tokens(model, tokens)[0], tokens)
            b = len(items)
            scores = {
                item["index"]: (seq[j].item(), seq[b + j].item())
                for j, ((_, real), item) in enumerate(zip(chunk, items, strict=True))
                if real
            }
            out.update(scores)
            if on_batch is not None:
                on_batch(scores)
    return out
