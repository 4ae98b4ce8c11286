"""Per-prompt sampling settings: one generation run answers prompts of several settings (the MT-Bench
prompt files carry a temperature per category) with one engine.

vLLM takes a ``SamplingParams`` per prompt, so its engines answer every setting in the same batches;
each sampled prompt carries its own seed (:func:`row_seed`: ``--train.seed``, the row's id and the
turn), so its answer does not depend on which prompts share its batch, how many engines run, the batch
size, or whether the run was resumed. transformers' batched ``generate`` takes one setting per call and
has one random stream: the hf backend answers one setting at a time (:func:`setting_groups`), seeding
that stream with ``--train.seed`` at the start of each (the seeds of :class:`Sampling` are not used).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Sampling:
    """How to answer one prompt: temperature 0 is greedy; ``seed`` is a sampled prompt's own seed."""

    temperature: float
    max_new_tokens: int
    seed: Optional[int] = None


def row_seed(seed: int, row_id, turn: int = 0) -> int:
    """The seed of one sampled answer (turn ``turn`` of row ``row_id``), from the run's seed: a 63-bit hash,
    the same in every process and run (an id ``1`` and an id ``"1"`` differ)."""
    key = json.dumps([int(seed), row_id, int(turn)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def setting_groups(sampling: Sequence[Sampling]) -> List[Tuple[Tuple[float, int], List[int]]]:
    """Positions of ``sampling`` per distinct (temperature, max_new_tokens), in order of first appearance
    (seeds are not part of a setting)."""
    groups: Dict[Tuple[float, int], List[int]] = {}
    for k, s in enumerate(sampling):
        groups.setdefault((s.temperature, s.max_new_tokens), []).append(k)
    return list(groups.items())
