"""Feed micro-batches to the loop from DataLoader workers, in a fixed, resumable order.

The loop decides *which* rows form each micro-batch (a pure function of seed
and epoch, so resume is exact); workers only *build* them: collate tokens and,
for multimodal models, decode and preprocess media while the previous step
runs. Workers never raise: what they could not use comes back in the batch's
``problems``, and :class:`BatchProblems` turns it into one clear line (or a
counted skip) in the main process, instead of a worker traceback. Random
augmentation in a collate (crops, flips) draws from a generator seeded by the
micro-batch's place in the run (:func:`micro_batch_seed`), so it too is the
same in a worker or inline, before and after a resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mmtune.errors import DataError

log = logging.getLogger(__name__)


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
    def __init__(self, rows: list[list[int]], collate: Callable[[list[list[int]]], Any]) -> None:
        self.rows = rows
        self.collate = collate

    def __getitem__(self, key: MicroBatchKey):
        # Random augmentation in a collate (crops, flips) draws from torch's generator, seeded here by the
        # micro-batch's place in the run: the same crops in a worker or inline, before and after a resume.
        # fork_rng leaves the caller's generator as it was (inline, that is the training process's).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(micro_batch_seed(key))
            return key, self.collate([self.rows[r] for r in key.rows])


def micro_batch_seed(key: MicroBatchKey) -> int:
    """A seed that is a pure function of the micro-batch (its epoch, position and rows, which the run's seed orders)."""
    return int(np.random.SeedSequence([key.epoch, key.index, *key.rows]).generate_state(1)[0])


def _as_is(item):
    return item


def micro_batch_stream(keys: Iterable[MicroBatchKey], rows: list[list[int]], collate: Callable, *,
                       num_workers: int) -> Iterator[tuple[MicroBatchKey, Any]]:
    """``(key, batch)`` in the order of ``keys``; built ``num_workers`` processes ahead (0: inline)."""
    loader = DataLoader(
        MicroBatches(rows, collate), sampler=keys, batch_size=None, collate_fn=_as_is,
        num_workers=num_workers, prefetch_factor=4 if num_workers else None,
        # Its own generator: starting the loader must not draw from the global RNG, which a
        # resumed run restores exactly (dropout masks would shift otherwise).
        generator=torch.Generator().manual_seed(0),
    )
    return iter(loader)


@dataclass
class BatchProblems:
    """Samples dropped while their batches were built (media that fail to decode).

    ``on_bad_sample: error`` stops at the first with its one line (file, row,
    field); ``skip`` counts each failing item once per reason, however many
    epochs (or mixture draws) meet it, and warns once per item.
    """

    on_bad_sample: str
    dropped: dict[str, set[str]] = field(default_factory=dict)
    """Reason -> the origins of the items that failed for it."""
    first: dict[str, str] = field(default_factory=dict)

    def check(self, batch) -> None:
        for problem in batch.problems:
            if self.on_bad_sample == "error":
                raise DataError(f"{problem.detail} (found while building a batch: the file is corrupt past its "
                                "header, or changed since the data was checked)", reason=problem.reason)
            seen = self.dropped.setdefault(problem.reason, set())
            if problem.item not in seen:
                seen.add(problem.item)
                self.first.setdefault(problem.reason, problem.detail)
                log.warning("skipped a sample while building a batch: %s", problem.detail)

    def merge(self, others: list["BatchProblems"]) -> None:
        """Add what other processes met (each process builds its own share of the batches)."""
        for other in others:
            for reason, items in other.dropped.items():
                self.dropped.setdefault(reason, set()).update(items)
            for reason, detail in other.first.items():
                self.first.setdefault(reason, detail)

    def counts(self) -> dict[str, int]:
        return {reason: len(samples) for reason, samples in self.dropped.items()}

    def lines(self) -> list[str]:
        return [f"{len(items)} sample(s) skipped while building batches: {reason} (first: {self.first[reason]})"
                for reason, items in self.dropped.items()]
