"""Feed micro-batches to the loop from DataLoader workers, in a fixed, resumable order.

The loop decides *which* rows form each micro-batch (a pure function of seed
and epoch, so resume is exact); workers only *build* them: collate tokens and,
for vision models, decode and preprocess images while the previous step runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from mmtune.data.packing import Batch, Collator


@dataclass(frozen=True)
class MicroBatchKey:
    epoch: int
    index: int
    """Position of this micro-batch in its epoch's order."""
    rows: tuple[int, ...]
    ends_window: bool
    """Last micro-batch of this process in its accumulation window."""
    window_end: tuple[int, int]
    """(epoch, index) of the window's last micro-batch over all processes: where a resume continues."""


class MicroBatches(Dataset):
    def __init__(self, rows: list[list[int]], collate: Collator) -> None:
        self.rows = rows
        self.collate = collate

    def __getitem__(self, key: MicroBatchKey) -> tuple[MicroBatchKey, Batch]:
        return key, self.collate([self.rows[r] for r in key.rows])


def _as_is(item):
    return item


def micro_batch_stream(keys: Iterable[MicroBatchKey], rows: list[list[int]], collate: Collator, *,
                       num_workers: int) -> Iterator[tuple[MicroBatchKey, Batch]]:
    """``(key, batch)`` in the order of ``keys``; built ``num_workers`` processes ahead (0: inline)."""
    loader = DataLoader(
        MicroBatches(rows, collate), sampler=keys, batch_size=None, collate_fn=_as_is,
        num_workers=num_workers, prefetch_factor=4 if num_workers else None,
        # Its own generator: starting the loader must not draw from the global RNG, which a
        # resumed run restores exactly (dropout masks would shift otherwise).
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)
