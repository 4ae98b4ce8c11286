"""A resumable distributed sampler (our own, DistributedSampler-like).

Global order of one epoch: a permutation of ``range(len(dataset))`` drawn from a torch
generator seeded with ``seed + epoch`` (or the identity when ``shuffle=False``), cut to a
multiple of ``num_replicas`` (drop_last, so every rank has the same number of samples).
Rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of that order. ``consumed_samples``
(a GLOBAL count, all ranks together, within this epoch) skips the head of the global
order, so a resumed run visits exactly the samples an uninterrupted run would still
visit, in the same order, on the same ranks.
"""

from __future__ import annotations

from typing import Iterator, List, Sized, Union

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(
        self,
        dataset: Union[Sized, int],
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        consumed_samples: int = 0,
    ):
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.dataset_len = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        # Samples per epoch over all ranks (drop_last).
        self.total_size = (self.dataset_len // num_replicas) * num_replicas
        self.epoch = 0
        self.consumed_samples = 0
        self.set_epoch(epoch, consumed_samples)

    def set_epoch(self, epoch: int, consumed_samples: int = 0) -> None:
        """Select the epoch (its shuffle) and how many global samples of it were already used."""
        if consumed_samples < 0 or consumed_samples > self.total_size:
            raise ValueError(
                f"consumed_samples={consumed_samples} is outside [0, {self.total_size}] "
                f"(samples per epoch over {self.num_replicas} ranks)"
            )
        if consumed_samples % self.num_replicas != 0:
            raise ValueError(
                f"consumed_samples={consumed_samples} must be a multiple of the number of ranks "
                f"({self.num_replicas}); it counts whole global batches"
            )
        self.epoch = epoch
        self.consumed_samples = consumed_samples

    def global_order(self) -> List[int]:
        """The full (uncut, unskipped) order of this epoch, identical on every rank."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            return torch.randperm(self.dataset_len, generator=g).tolist()
        return list(range(self.dataset_len))

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()[: self.total_size]
        remaining = order[self.consumed_samples :]
        return iter(remaining[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return (self.total_size - self.consumed_samples) // self.num_replicas
