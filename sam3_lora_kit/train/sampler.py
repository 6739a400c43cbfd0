"""Which dataset items make each micro-batch: a pure function of (seed, micro-batch index, rank).

Every epoch is a fresh permutation seeded by ``(seed, epoch)``; micro-batches walk through the
permutations back to back, and with several processes each rank takes its own slice of every
global micro-batch. Because nothing is stateful, a resumed run computes the same batches from
the step it resumes at, and data-loading workers need no shared state.
"""
from __future__ import annotations

import torch

__all__ = ["EpochSampler"]


class EpochSampler:
    """``sampler.indices(micro_index)``: the dataset indices of this rank's part of a micro-batch."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty: nothing to train on")
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._perms: dict[int, list[int]] = {}

    def permutation(self, epoch: int) -> list[int]:
        """The order of epoch ``epoch`` (cached; only the last two are kept)."""
        if epoch not in self._perms:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.num_items, generator=generator).tolist()
        return self._perms[epoch]

    def indices(self, micro_index: int) -> list[int]:
        """Dataset indices for global micro-batch ``micro_index`` on this rank (``batch_size`` of them)."""
        start = (micro_index * self.world_size + self.rank) * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.num_items)
            out.append(self.permutation(epoch)[offset])
        return out

    def epoch(self, micro_index: int) -> float:
        """How many passes over the data the first ``micro_index`` micro-batches made (all ranks)."""
        return micro_index * self.world_size * self.batch_size / self.num_items

    def micro_batches_for(self, epochs: float) -> int:
        """Global micro-batches that cover ``epochs`` passes (at least one)."""
        import math

        return max(1, math.ceil(epochs * self.num_items / (self.world_size * self.batch_size)))
