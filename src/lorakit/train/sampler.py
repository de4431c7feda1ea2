"""Which examples each optimizer step uses: a pure function of (seed, step), so resuming needs only the step.

The sample stream is the concatenation of per-epoch permutations (epoch ``e`` shuffled with seed ``seed + e``);
step ``s`` takes stream positions ``[s·G, (s+1)·G)`` where ``G`` is the global batch. Micro-batch ``m`` of
process ``r`` (of ``W``) takes the ``b`` rows starting at ``(m·W + r)·b`` of that global batch, so every
process count with the same global batch trains on the same examples per step.
"""

from __future__ import annotations

import functools

import torch


class StepSampler:
    def __init__(self, size: int, batch_size: int, grad_accum: int, world: int, seed: int) -> None:
        self.size, self.batch_size, self.grad_accum, self.world, self.seed = size, batch_size, grad_accum, world, seed

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.world

    @functools.lru_cache(maxsize=4)
    def _permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def step_indices(self, step: int) -> list[int]:
        """The whole global batch of optimizer step ``step``."""
        start = step * self.global_batch
        positions = range(start, start + self.global_batch)
        return [self._permutation(k // self.size)[k % self.size] for k in positions]

    def micro_batches(self, indices: list[int], rank: int) -> list[list[int]]:
        """This process's micro-batches of one global batch."""
        b = self.batch_size
        return [indices[(m * self.world + rank) * b : (m * self.world + rank + 1) * b] for m in range(self.grad_accum)]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.size
