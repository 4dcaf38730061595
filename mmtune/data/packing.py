"""Rows, batches and contamination-free packing.

A *row* is a list of sample indices that share one sequence of at most
``max_length`` tokens. Unpacked training has one sample per row; packed
training fills rows by first-fit-decreasing bin packing. In a packed row the
position ids restart at every sample and attention is block-diagonal causal,
so a sample never sees another: on GPU with flash-attention through the
varlen kernel (position ids alone), elsewhere through an explicit 4-D mask.

Targets are shifted here, inside each sample: position ``t`` predicts token
``t+1`` of the same sample, and the last token of a sample predicts nothing.
So no target crosses a sample boundary, whatever ``train_on_prompt`` says.

Samples with media: their media positions hold placeholder ids (counted in
every length), and the collator decodes and preprocesses their items, in the
order their placeholders appear in the batch (row-major), into
``Batch.media`` (one :class:`~mmtune.modalities.base.MediaInputs` per
modality). It runs in DataLoader workers, so it never raises: an item that
fails to decode (corrupt past its header) drops its sample from the batch and
is recorded in ``Batch.problems``; the loop then stops with that one line, or
counts the skip (``data.on_bad_sample``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmtune.modalities.base import MediaInputs, MediaInputSpec, MediaProblem, collate_media, load_item

IGNORE_INDEX = -100


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Pack items into bins of ``capacity`` tokens, first-fit-decreasing, O(n log n).

    A segment tree over the bins' free space finds the first bin with room in
    log time. Items longer than ``capacity`` must have been truncated before.
    """
    n = len(lengths)
    if n == 0:
        return []
    if int(lengths.max()) > capacity:
        raise ValueError(f"an item of length {int(lengths.max())} exceeds the bin capacity {capacity}")
    order = np.argsort(-lengths, kind="stable")
    size = 1
    while size < n:
        size *= 2
    free = np.zeros(2 * size, dtype=np.int64)  # leaves: free space of bins (0 = not opened yet)
    opened = 0
    bins: list[list[int]] = []

    def update(leaf: int, value: int) -> None:
        i = leaf + size
        free[i] = value
        i //= 2
        while i:
            free[i] = max(free[2 * i], free[2 * i + 1])
            i //= 2

    for item in order:
        need = int(lengths[item])
        if free[1] >= need:
            i = 1
            while i < size:  # descend to the leftmost leaf with enough room
                i = 2 * i if free[2 * i] >= need else 2 * i + 1
            b = i - size
            bins[b].append(int(item))
            update(b, int(free[i]) - need)
        else:
            bins.append([int(item)])
            update(opened, capacity - need)
            opened += 1
    return bins


def make_rows(lengths: np.ndarray, max_length: int, packing: bool) -> list[list[int]]:
    if packing:
        return first_fit_decreasing(lengths, max_length)
    return [[i] for i in range(len(lengths))]


def packing_utilisation(rows: list[list[int]], lengths: np.ndarray, max_length: int) -> float:
    """Share of row capacity filled with real tokens."""
    if not rows:
        return 0.0
    return float(lengths.sum()) / (len(rows) * max_length)


@dataclass(frozen=True)
class BatchProblem:
    """A sample dropped while its batch was built: the item that failed, why, and the one-line message naming it."""

    item: str
    """The failing item's origin (file, row, field), which identifies it across epochs and splits."""
    reason: str
    detail: str


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long
    targets: torch.Tensor  # [B, L] long, IGNORE_INDEX where nothing is predicted
    position_ids: torch.Tensor  # [B, L] long, restarting at each sample
    attention_mask: torch.Tensor | None  # [B, 1, L, L] bool block-diagonal causal, or None (varlen)
    num_targets: int
    num_tokens: int  # real (non-pad) tokens
    media: dict[str, MediaInputs] = field(default_factory=dict)
    """Per modality, its items in placeholder order (empty for text)."""
    problems: list[BatchProblem] = field(default_factory=list)
    target_group: torch.Tensor | None = None
    """[B, L] long: the task index (in a multi-task mixture) of each target position, -1 elsewhere; None when
    no dataset names a task. A packed row holds samples of several tasks, so the index is per target."""
    group_targets: torch.Tensor | None = None
    """[tasks] long: the targets of each task in this batch (beside ``num_targets``)."""
    token_group: torch.Tensor | None = None
    """[B, L] long: the task index of every token (prompt too), -1 on padding; with ``target_group``. What a
    model with per-task parameters (``task: hint``'s generated adapters) selects them by."""

    def to(self, device: torch.device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.targets.to(device),
            self.position_ids.to(device),
            None if self.attention_mask is None else self.attention_mask.to(device),
            self.num_targets,
            self.num_tokens,
            {name: inputs.to(device) for name, inputs in self.media.items()},
            self.problems,
            None if self.target_group is None else self.target_group.to(device),
            self.group_targets,
            None if self.token_group is None else self.token_group.to(device),
        )


class Collator:
    """Build a :class:`Batch` from rows of samples.

    ``block_mask``: build the explicit block-diagonal mask (CPU, SDPA, eager).
    Without it the model must be able to split samples from ``position_ids``
    (flash-attention varlen). ``media``: per modality, the model branch's
    input spec (``samples`` must then have ``media(k)``). ``num_tasks``: the tasks of a multi-task mixture
    (``samples`` must then have ``task(k)``); each batch then carries every target's task index.
    """

    def __init__(self, samples, *, pad_id: int, block_mask: bool = True, pad_to_multiple_of: int = 8,
                 media: dict[str, MediaInputSpec] | None = None, num_tasks: int = 0) -> None:
        self.samples = samples
        self.num_tasks = num_tasks
        self.pad_id = pad_id
        self.block_mask = block_mask
        self.multiple = pad_to_multiple_of
        self.media = media or {}

    def __call__(self, rows: list[list[int]]) -> Batch:
        loaded, problems = [], []
        if self.media:
            rows, loaded, problems = self._load_media(rows)
        parts = [[self.samples[i] for i in row] for row in rows]
        width = max([sum(len(ids) for ids, _ in row) for row in parts] + [1])
        width = -(-width // self.multiple) * self.multiple
        B = len(rows)
        input_ids = np.full((B, width), self.pad_id, dtype=np.int64)
        targets = np.full((B, width), IGNORE_INDEX, dtype=np.int64)
        position_ids = np.zeros((B, width), dtype=np.int64)
        segment = np.full((B, width), -1, dtype=np.int64)
        task = np.full((B, width), -1, dtype=np.int64)
        token_task = np.full((B, width), -1, dtype=np.int64)
        num_tokens = 0
        for b, row in enumerate(parts):
            t = 0
            for s, (ids, trained) in enumerate(row):
                n = len(ids)
                input_ids[b, t : t + n] = ids
                shifted = np.where(trained[1:], ids[1:], IGNORE_INDEX)
                targets[b, t : t + n - 1] = shifted
                position_ids[b, t : t + n] = np.arange(n)
                segment[b, t : t + n] = s
                if self.num_tasks:
                    k = self.samples.task(rows[b][s])
                    task[b, t : t + n - 1] = np.where(shifted != IGNORE_INDEX, k, -1)
                    token_task[b, t : t + n] = k
                t += n
            num_tokens += t
            # Padding continues the position count so varlen kernels see one more sequence.
            position_ids[b, t:] = np.arange(width - t)
        mask = None
        if self.block_mask:
            seg = torch.from_numpy(segment)
            same = seg[:, :, None] == seg[:, None, :]
            causal = torch.ones(width, width, dtype=torch.bool).tril_()
            # Padding forms one more block (segment -1), so no attention row is empty.
            mask = (same & causal)[:, None]
        t_targets = torch.from_numpy(targets)
        target_group = group_targets = token_group = None
        if self.num_tasks:
            target_group, token_group = torch.from_numpy(task), torch.from_numpy(token_task)
            group_targets = torch.bincount(target_group[target_group >= 0], minlength=self.num_tasks)
        return Batch(
            torch.from_numpy(input_ids),
            t_targets,
            torch.from_numpy(position_ids),
            mask,
            int((t_targets != IGNORE_INDEX).sum()),
            num_tokens,
            collate_media(loaded, self.media),
            problems,
            target_group,
            group_targets,
            token_group,
        )

    def _load_media(self, rows: list[list[int]]):
        """Decode every sample's media; a sample whose item fails is dropped from its row and recorded."""
        kept_rows, loaded, problems = [], [], []
        for row in rows:
            kept = []
            for i in row:
                mine, problem = [], None
                for item in self.samples.media(i):
                    try:
                        mine.append((item, load_item(item, self.media[item.modality])))
                    except MediaProblem as exc:
                        problem = BatchProblem(item.origin or item.path, exc.reason, exc.detail)
                    except Exception as exc:  # a worker must not raise: any failure becomes the item's problem
                        where = f"{item.origin}: " if item.origin else ""
                        problem = BatchProblem(item.origin or item.path, f"unusable {item.modality}",
                                               f"{where}cannot use {item.path}: {type(exc).__name__}: {exc}")
                    if problem is not None:
                        break
                if problem is not None:
                    problems.append(problem)
                    continue
                kept.append(i)
                loaded += mine
            kept_rows.append(kept)
        return kept_rows, loaded, problems
