"""Batches of the hint task: a packed LM batch plus the instructions of the tasks in it.

The LM batch is the ordinary one (:class:`~mmtune.data.packing.Collator`, packing as usual: a row may hold
samples of several tasks, each token tagged with its task). On top, every task present gets its instruction
ids once, however many of its samples the batch holds, and each token's task index is renumbered into those
``K`` instructions (``token_slot``), which is what the generated adapters are selected by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmtune.data.packing import Batch, Collator


@dataclass
class HintBatch:
    lm: Batch
    tasks: torch.Tensor
    """[K] long: the task index (into the run's tasks) of each instruction."""
    instruction_ids: torch.Tensor
    """[K, T] long, right-padded."""
    instruction_mask: torch.Tensor
    """[K, T] bool."""
    token_slot: torch.Tensor
    """[B, L] long: each token's instruction index in 0..K-1, -1 on padding."""

    @property
    def num_targets(self) -> int:
        return self.lm.num_targets

    @property
    def num_tokens(self) -> int:
        return self.lm.num_tokens

    @property
    def problems(self) -> list:
        return self.lm.problems

    @property
    def group_targets(self) -> torch.Tensor | None:
        return self.lm.group_targets

    def to(self, device: torch.device) -> "HintBatch":
        return HintBatch(self.lm.to(device), self.tasks.to(device), self.instruction_ids.to(device),
                         self.instruction_mask.to(device), self.token_slot.to(device))


def pad_instructions(instructions: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [K, T] and mask [K, T] of several instructions."""
    width = max(len(ids) for ids in instructions)
    ids = torch.full((len(instructions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(instructions), width), dtype=torch.bool)
    for k, row in enumerate(instructions):
        ids[k, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[k, : len(row)] = True
    return ids, mask


class HintCollate:
    """Rows -> :class:`HintBatch`; picklable, runs in DataLoader workers like the collator it wraps."""

    def __init__(self, collator: Collator, instructions: list[np.ndarray], pad_id: int) -> None:
        self.collator = collator
        self.instructions = instructions
        """Per task of the run, its instruction's ids (in the encoder's tokenizer)."""
        self.pad_id = pad_id

    def __call__(self, rows: list[list[int]]) -> HintBatch:
        lm = self.collator(rows)
        token_task = lm.token_group
        present = torch.unique(token_task[token_task >= 0])
        if len(present) == 0:  # every sample dropped (problems): nothing to generate, one dummy instruction
            present = torch.zeros(1, dtype=torch.long)
        slot_of = torch.full((len(self.instructions),), -1, dtype=torch.long)
        slot_of[present] = torch.arange(len(present))
        token_slot = torch.where(token_task >= 0, slot_of[token_task.clamp(min=0)], -1)
        ids, mask = pad_instructions([self.instructions[int(k)] for k in present], self.pad_id)
        return HintBatch(lm, present, ids, mask, token_slot)
