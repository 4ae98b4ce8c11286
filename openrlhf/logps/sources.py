"""Where the loss reads each frozen model's log-probs of a micro-batch: one :class:`LogpSource` per frozen
model, chosen once in the recipe (see :mod:`openrlhf.logps`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from openrlhf.datasets.batch import PairBatch
from openrlhf.models.loss import PairLogps

from .forward import frozen_pair_logps
from .frozen import FrozenModel


class LogpSource(ABC):
    """The sequence log-probs of one frozen model (``model``) on the pairs of a batch."""

    def __init__(self, model: FrozenModel):
        self.model = model

    @property
    def name(self) -> str:
        return self.model.name

    @abstractmethod
    def pair_logps(self, batch: PairBatch) -> PairLogps:
        """(chosen [B], rejected [B]) log-probs of the batch's pairs."""


class OnlineLogps(LogpSource):
    """The frozen ``engine`` runs here on every batch: a teacher on its own tokenisation of the pairs
    (``batch.own[name]``), the reference on the policy's (``batch.tokens``)."""

    def __init__(self, model: FrozenModel, engine: Any):
        super().__init__(model)
        self.engine = engine

    def pair_logps(self, batch: PairBatch) -> PairLogps:
        tokens = batch.own[self.name] if self.model.own_tokens else batch.tokens
        return frozen_pair_logps(self.engine, tokens)


class KnownLogps(LogpSource):
    """Log-probs the batch carries (``batch.known[name]``): cached columns, or computed elsewhere (the Ray
    trainers' frozen groups), put in the items by :class:`~openrlhf.logps.known.WithKnownLogps`."""

    def pair_logps(self, batch: PairBatch) -> PairLogps:
        chosen, rejected = batch.known[self.name]
        return PairLogps(chosen, rejected)
