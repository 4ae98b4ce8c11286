"""Packed micro-batches (``--ds.packing_samples``): the sequences of a padded batch laid end to end
in one row, without padding.

A packed batch has ``input_ids`` [1, L], ``position_ids`` [1, L] (restarting at 0 for each
sequence), ``loss_mask`` [1, L], ``seq_index`` [1, L] (which sequence each token belongs to, in
the order of the padded rows: chosen rows first for a pair batch), ``n_seqs`` (an int) and
``attention_mask`` None. Given ``position_ids`` and no attention mask, transformers keeps
attention inside each sequence: a block-diagonal causal mask for sdpa / eager (exact on CPU),
flash-attention's variable-length kernel on GPU. Log-probs are summed back per sequence with
:func:`openrlhf.models.actor.sequence_sums`.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

# Batch keys of one tokenisation (``""``: the policy's; ``"teacher_"``, ... for teachers).
_LAYOUT = ("input_ids", "attention_mask", "loss_mask")


def pack_rows(input_ids, attention_mask, loss_mask) -> Dict[str, object]:
    """Right-padded ``[N, T]`` tensors -> one packed row (see the module doc)."""
    lengths = attention_mask.sum(-1).tolist()
    ids, pos, loss, seq = [], [], [], []
    for k, n in enumerate(lengths):
        n = int(n)
        ids.append(input_ids[k, :n])
        loss.append(loss_mask[k, :n])
        pos.append(torch.arange(n, dtype=torch.long))
        seq.append(torch.full((n,), k, dtype=torch.long))
    return {
        "input_ids": torch.cat(ids).unsqueeze(0),
        "attention_mask": None,
        "loss_mask": torch.cat(loss).unsqueeze(0),
        "position_ids": torch.cat(pos).unsqueeze(0),
        "seq_index": torch.cat(seq).unsqueeze(0),
        "n_seqs": len(lengths),
    }


def pack_batch(batch: Dict[str, object], prefixes: Sequence[str] = ("",)) -> Dict[str, object]:
    """Replace the padded layout of each tokenisation ``prefix`` in ``batch`` by its packed layout;
    other keys (cached log-probs, raw texts, prompt lengths, indices) are kept."""
    out = dict(batch)
    for prefix in prefixes:
        if prefix + "input_ids" not in batch:
            continue
        packed = pack_rows(*(batch[prefix + k] for k in _LAYOUT))
        for k, v in packed.items():
            out[prefix + k] = v
    return out


def real_and_padded_tokens(batch: Dict[str, object], prefix: str = "") -> tuple:
    """(tokens that are real, tokens the forward pass computes) of one tokenisation of a batch."""
    ids = batch[prefix + "input_ids"]
    mask = batch.get(prefix + "attention_mask")
    total = int(ids.numel())
    return (total if mask is None else int(mask.sum())), total
