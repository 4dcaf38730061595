"""The contract between the training loop and a task.

The loop (``mmtune.training.loop``) owns everything every task needs:
optimizer, weighted accumulation, clipping, schedule, resume, atomic
checkpoints, the NaN guard, metrics and progress. A task owns what differs:
its model and objective, its rows and how they are collated, and what
``final/`` holds. It hands them to the loop as a :class:`TaskRun`.

The objective's ``forward(batch)`` returns ``(loss_sum, n_targets)``: the sum
of per-target losses and how many targets they cover (tokens for SFT, samples
for a diffusion task). With ``TaskRun.loss_groups`` (the tasks of a
multi-task mixture) it returns a third value, the loss sum of each group's
targets [groups], and each batch has ``group_targets`` (the targets of each). The loop divides by the targets of the whole
accumulation window on all processes, so every target weighs the same however
they fall into batches. A batch has ``to(device)``, ``num_targets`` and
``problems`` (samples dropped while it was built; see ``mmtune.data.loader``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from mmtune.config.schema import LomoConfig, Recipe
from mmtune.training.setup import Runtime


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TaskRun:
    """What a task hands the loop."""

    objective: nn.Module
    """``forward(batch) -> (loss_sum, n_targets)``; the module DDP / FSDP / DeepSpeed wrap."""
    param_groups: list[dict]
    """Optimizer parameter groups (each with ``lr`` and ``weight_decay``)."""
    rows: list[list[int]]
    """Training rows: the sample indices of each row (a micro-batch takes ``micro_batch_size`` rows)."""
    val_rows: list[list[int]]
    collate: Callable[[list[list[int]]], Any]
    """Rows -> a batch; runs in DataLoader workers, so it must be picklable and never raise on bad input."""
    val_collate: Callable[[list[list[int]]], Any]
    save_final: Callable[[Path, nn.Module], None]
    """Write ``final/`` from the (unwrapped) objective."""
    on_bad_sample: str = "error"
    num_workers: int = 0
    shuffle: bool = True
    summary: dict[str, Any] = field(default_factory=dict)
    """Task figures added to the run's ``summary.json``."""
    flops_per_target: float | None = None
    """Training FLOPs per target, for MFU (6 x parameters for a decoder); None: MFU not logged."""
    throughput_key: str = "tokens_per_s"
    """The metrics key of targets per second (``tokens_per_s`` for SFT)."""
    with_gradients: Callable[[int, int], None] | None = None
    """Called after every ``optimizer.step()``, before the gradients are cleared, with the step just taken
    (from 0) and the run's step count: a method that reads gradients (AdaLoRA's rank allocation)."""
    after_step: Callable[[], None] | None = None
    """Called after every optimizer step (an EMA update, for instance)."""
    extra_state: Stateful | None = None
    """Task state saved in checkpoints and restored on resume (an EMA, for instance)."""
    lomo: LomoConfig | None = None
    """Set when the weights are to be updated inside backward (LOMO / AdaLomo, ``training.update_rules``)
    instead of by AdamW after it."""
    loss_groups: tuple[str, ...] = ()
    """Names of the target groups whose losses are logged apart (``task_loss/<name>``, ``eval_loss/<name>``):
    the tasks of a multi-task mixture; empty for none."""


class Task(Protocol):
    def setup(self, recipe: Recipe, runtime: Runtime) -> TaskRun:
        """Build the model, the objective, the data and ``final/``'s writer for ``recipe``."""
        ...
