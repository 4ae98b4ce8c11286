"""Packed micro-batches (``--ds.packing_samples``): the sequences of a padded batch laid end to end
in one row, without padding.

A packed batch has ``input_ids`` [1, L], ``position_ids`` [1, L] (restarting at 0 for each
sequence), ``loss_mask`` [1, L], ``seq_index`` [1, L] (which sequence each token belongs to, in
the order of the padded rows: chosen rows first for a pair batch), ``n_seqs`` (an int) and
``attention_mask`` None. Given ``position_ids`` and no attention mask, transformers keeps
attention inside each sequence: a block-diagonal causal mask for sdpa / eager (exact on CPU),
flash-attention's variable-length kernel on GPU. Log-probs are summed back per sequence with
:func:`openrlhf.models.actor.sequence_sums`. :meth:`openrlhf.datasets.batch.Tokens.packed` packs a batch's
tokenisation.
"""

from __future__ import annotations

from typing import Dict

import torch


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
