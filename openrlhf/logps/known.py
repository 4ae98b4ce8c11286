"""Log-probs known before the forward pass (cached columns, or computed elsewhere), carried by the items."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Protocol, Sequence, Tuple

Pair = Tuple[float, float]  # (chosen, rejected) sequence log-probs of one row


class LogpProvider(Protocol):
    """Where known log-probs come from: ``get(name, row index) -> (chosen, rejected)``."""

    def get(self, name: str, index: int) -> Pair: ...


class CachedTable:
    """The provider of cached log-probs: {name: {row index: (chosen, rejected)}}, checked when loaded
    (:func:`openrlhf.logps.cache.load_cached`)."""

    def __init__(self, values: Mapping[str, Mapping[int, Pair]]):
        self.values = {name: dict(v) for name, v in values.items()}

    def get(self, name: str, index: int) -> Pair:
        return self.values[name][index]


class WithKnownLogps:
    """A dataset view that adds ``item["logps"][name] = (chosen, rejected)`` for each of ``names`` from
    ``provider`` (by the item's original row ``index``); :func:`~openrlhf.datasets.preference_dataset.
    preference_collate` turns them into ``PairBatch.known``."""

    def __init__(self, base, provider: LogpProvider, names: Sequence[str]):
        self.base = base
        self.provider = provider
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = dict(self.base[i])
        known = dict(item.get("logps", {}))
        for name in self.names:
            known[name] = self.provider.get(name, item["index"])
        item["logps"] = known
        return item

    def row_index(self, i: int) -> int:
        """The original row index of item ``i``, without asking the provider."""
        return self.base.row_index(i) if isinstance(self.base, WithKnownLogps) else self.base[i]["index"]
