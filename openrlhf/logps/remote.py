"""Log-probs computed elsewhere: the Ray trainers' frozen actor groups score each global batch ahead of the
policy and hand the scores over through Ray's object store."""

from __future__ import annotations

import time
from typing import Dict, List, Sequence, Tuple


class ChunkedLogps:
    """The policy's view of the frozen groups' scores: ``chunks`` is a list of (row indices, {name: object
    refs, one per rank of that frozen model's group}); :meth:`get` waits for a chunk the first time one of its rows
    is asked for. ``wait_seconds``: the time spent waiting (what the overlap did not hide)."""

    def __init__(self, chunks: Sequence[Tuple[List[int], Dict[str, list]]]):
        self.chunks = list(chunks)
        self.where = {i: k for k, (indices, _) in enumerate(self.chunks) for i in indices}
        self.loaded: Dict[Tuple[int, str], Dict[int, Tuple[float, float]]] = {}
        self.wait_seconds = 0.0

    def get(self, name: str, index: int) -> Tuple[float, float]:
        import ray

        k = self.where[index]
        if (k, name) not in self.loaded:
            t = time.perf_counter()
            merged: Dict[int, Tuple[float, float]] = {}
            for part in ray.get(self.chunks[k][1][name]):
                merged.update(part)
            self.wait_seconds += time.perf_counter() - t
            self.loaded[(k, name)] = merged
        return self.loaded[(k, name)][index]
