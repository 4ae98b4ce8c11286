"""The typed micro-batches the trainers read: one tokenisation (:class:`Tokens`), an SFT batch
(:class:`SeqBatch`) and a preference batch (:class:`PairBatch`).

A :class:`Tokens` is right-padded (``input_ids`` / ``attention_mask`` / ``loss_mask`` [N, T]) or packed
(``--ds.packing_samples``: the N sequences end to end in one row [1, L], ``position_ids`` restarting at 0
for each, ``seq_index`` naming the sequence of each token, ``attention_mask`` None; see
:mod:`openrlhf.datasets.packing`). ``loss_mask`` is True on the tokens whose log-probs count (response
tokens), aligned with ``input_ids``: the model shifts it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .packing import pack_rows


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


@dataclass
class Tokens:
    """One tokenisation of N sequences, padded or packed (see the module doc)."""

    input_ids: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    loss_mask: torch.Tensor
    prompt_lens: Optional[torch.Tensor] = None  # [N], padded layout
    position_ids: Optional[torch.Tensor] = None  # packed layout
    seq_index: Optional[torch.Tensor] = None  # packed layout
    n_seqs: Optional[int] = None  # packed layout

    def to(self, device) -> "Tokens":
        return dataclasses.replace(
            self, **{f.name: _to(getattr(self, f.name), device) for f in dataclasses.fields(self)}
        )

    def packed(self) -> "Tokens":
        """The same sequences packed into one row (a packed one is returned as it is)."""
        if self.seq_index is not None:
            return self
        return Tokens(**pack_rows(self.input_ids, self.attention_mask, self.loss_mask), prompt_lens=self.prompt_lens)

    def real_and_padded(self) -> Tuple[int, int]:
        """(tokens that are real, tokens the forward pass computes)."""
        total = int(self.input_ids.numel())
        return (total if self.attention_mask is None else int(self.attention_mask.sum())), total

    def loss_tokens(self) -> int:
        """Tokens whose log-probs count (the shifted loss mask's)."""
        return int(self.loss_mask[:, 1:].sum())


@dataclass
class SeqBatch:
    """SFT / KD rows: the policy's ``tokens`` and each row's original index (``indices`` [B])."""

    tokens: Tokens
    indices: torch.Tensor

    @property
    def rows(self) -> int:
        return int(self.indices.numel())

    def to(self, device) -> "SeqBatch":
        return SeqBatch(self.tokens.to(device), self.indices.to(device))

    def packed(self) -> "SeqBatch":
        return SeqBatch(self.tokens.packed(), self.indices)


@dataclass
class PairBatch:
    """B preference pairs. ``tokens``: the policy's tokenisation, 2B sequences, chosen rows first, then the
    rejected rows in the same order (the reference and a dDPO+KL teacher read it too). ``indices`` [B]: the
    pairs' original row indices (what cached and remote log-probs are looked up by); ``truncated`` [B]:
    either response was cut to --data.max_len; ``prompts`` / ``chosen`` / ``rejected``: the raw values.
    ``own``: each teacher scored here, by name (``teacher``, ``teacher_2``, ...), in its own tokenizer and
    chat template, whole responses, same layout. ``known``: the log-probs known before the forward pass
    (cached, or computed elsewhere), by name: (chosen [B], rejected [B]) float32. ``mismatched``: KTO's KL reference pairs (each prompt with
    the responses of the next pair), in the policy's tokenisation."""

    tokens: Tokens
    indices: torch.Tensor
    truncated: torch.Tensor
    prompts: List[Any]
    chosen: List[Any]
    rejected: List[Any]
    own: Dict[str, Tokens] = field(default_factory=dict)
    known: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    mismatched: Optional[Tokens] = None

    @property
    def rows(self) -> int:
        return int(self.indices.numel())

    def to(self, device) -> "PairBatch":
        return dataclasses.replace(
            self,
            tokens=self.tokens.to(device),
            indices=self.indices.to(device),
            truncated=self.truncated.to(device),
            own={name: t.to(device) for name, t in self.own.items()},
            known={name: (c.to(device), r.to(device)) for name, (c, r) in self.known.items()},
            mismatched=None if self.mismatched is None else self.mismatched.to(device),
        )

    def packed(self) -> "PairBatch":
        """Every tokenisation of the batch packed (one row each)."""
        return dataclasses.replace(
            self,
            tokens=self.tokens.packed(),
            own={name: t.packed() for name, t in self.own.items()},
            mismatched=None if self.mismatched is None else self.mismatched.packed(),
        )
