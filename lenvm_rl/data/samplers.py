"""Batch order for training on variable-length sequences."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

__all__ = ["ShuffledLengthGroupedSampler"]


class ShuffledLengthGroupedSampler(Sampler[int]):
    """Batches of similar length, in random order, from a seeded generator.

    The indices are shuffled, cut into mega-batches of ``mega_batch_mult * batch_size``, sorted by
    length within each mega-batch and cut into batches of ``batch_size``, so padding stays small.
    Then the batches themselves are shuffled. The batch holding the longest sequence goes first, so
    an out-of-memory error shows at the first step, and a short batch (the dataset's remainder) goes
    last, so every other run of ``batch_size`` consecutive indices is one batch.

    ``transformers.trainer_pt_utils.LengthGroupedSampler`` leaves each mega-batch sorted longest
    first: every ``mega_batch_mult`` steps training sweeps from the longest sequences to the
    shortest. A value model's targets follow length, so its loss then swings with the sweep and an
    epoch always ends on the shortest completions.

    Args:
        lengths: the length of every example (its padding cost).
        batch_size: examples per batch (per optimiser step, accumulation included).
        generator: draws every permutation; seed it for an order a resumed run reproduces.
        mega_batch_mult: batches per mega-batch; default ``min(len(lengths) // (4 * batch_size), 50)``,
            at least 1, as in transformers.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator | None = None,
                 mega_batch_mult: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.mega_batch_mult = mega_batch_mult or max(1, min(len(self.lengths) // (4 * batch_size), 50))

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        lengths, size = self.lengths, self.batch_size
        indices = torch.randperm(len(lengths), generator=self.generator).tolist()
        mega = self.mega_batch_mult * size
        megabatches = [indices[start : start + mega] for start in range(0, len(indices), mega)]
        if len(megabatches) > 1 and len(megabatches[-1]) < size:
            # A remainder smaller than a batch joins the mega-batch before it, so the short batch
            # holds that mega-batch's shortest sequences and never the dataset's longest alone.
            remainder = megabatches.pop()
            megabatches[-1] += remainder
        batches = []
        for megabatch in megabatches:
            by_length = sorted(megabatch, key=lambda i: lengths[i], reverse=True)
            batches += [by_length[j : j + size] for j in range(0, len(by_length), size)]
        full = [b for b in batches if len(b) == size]
        full = [full[i] for i in torch.randperm(len(full), generator=self.generator).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda b: lengths[full[b][0]])
            full[0], full[longest] = full[longest], full[0]
        for batch in full + [b for b in batches if len(b) < size]:
            yield from batch
