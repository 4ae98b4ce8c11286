"""Pieces shared by the SFT and preference datasets: problem lists, padding, reports."""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from openrlhf.utils.errors import raise_problems  # noqa: F401  (re-exported for the datasets)

from .loading import DataError


def where(source_name: str, i: int, rows=None) -> str:
    """Location of row ``i`` (0-based) in messages; rows count from 1 there. ``rows`` loaded from
    several sources (:class:`~openrlhf.datasets.loading.Rows`) name the row's own file."""
    origin = getattr(rows, "origin", None)
    return origin(i) if origin is not None else f"{source_name}, row {i + 1}"


# A response cut by a generation limit carries ``<its key>_unfinished: true`` (build_sets writes it
# with --keep_unfinished): it is trained / scored without the tokens that close a finished turn.
UNFINISHED_SUFFIX = "_unfinished"


def unfinished_flag(row: dict, key: str, w: str) -> bool:
    """The ``<key>_unfinished`` flag of a row (False when absent); a DataError if it is not a bool."""
    value = row.get(key + UNFINISHED_SUFFIX, False)
    if not isinstance(value, bool):
        raise DataError(f"{w}: key {key + UNFINISHED_SUFFIX!r} is {value!r}, expected true or false")
    return value


def pad_right(seqs: Sequence[Sequence[int]], pad_value, dtype):
    """A [len(seqs), max_len] tensor, each row right-padded with ``pad_value``."""
    T = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), T), pad_value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=dtype)
    return out


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, loss_masks: Optional[Sequence[Sequence[bool]]] = None):
    """Right-padded ``(input_ids [B, T] long, attention_mask [B, T] long)`` and, when
    ``loss_masks`` are given, the masks padded with False as a third [B, T] bool tensor."""
    ids = pad_right(seqs, pad_id, torch.long)
    attn = pad_right([[1] * len(s) for s in seqs], 0, torch.long)
    if loss_masks is None:
        return ids, attn
    return ids, attn, pad_right(loss_masks, False, torch.bool)


def masks(lengths: Sequence[int], prompt_lens: Sequence[int], T: int):
    """attention_mask ([B, T] long, 1 on real tokens) and loss_mask ([B, T] bool, response tokens)."""
    pos = torch.arange(T).unsqueeze(0)
    lengths_t = torch.as_tensor(list(lengths)).unsqueeze(1)
    prompt_t = torch.as_tensor(list(prompt_lens)).unsqueeze(1)
    attention = pos < lengths_t
    loss = attention & (pos >= prompt_t)
    return attention.long(), loss


# A row is dropped when its prompt alone has at least max_len - PROMPT_ROOM tokens (OpenRLHF's rule): a kept
# row has room for at least PROMPT_ROOM + 1 response tokens.
PROMPT_ROOM = 2


def prompt_too_long(prompt_len: int, max_len: int) -> bool:
    """OpenRLHF's drop rule for over-long prompts: ``prompt_len >= max_len - 2``."""
    return prompt_len >= max_len - PROMPT_ROOM


def format_report(kind: str, source_name: str, max_len: int, stats: Dict[str, int], truncated_detail: str = "") -> str:
    parts = [
        f"{kind} data {source_name}: {stats['rows']} rows, {stats['kept']} kept (max_len {max_len} tokens)",
        f"dropped {stats['dropped_prompt_too_long']} whose prompt alone has >= max_len - {PROMPT_ROOM} tokens",
        f"dropped {stats['dropped_empty_response']} with an empty or whitespace-only response",
        f"truncated the response of {stats['truncated_response']} rows to fit{truncated_detail}",
    ]
    return "; ".join(parts)
