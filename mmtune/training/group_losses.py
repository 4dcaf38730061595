"""Per-task losses of a multi-task mixture, summed exactly over a logging window or an evaluation.

The objective's optional third output is the loss sum of each task's targets in
a batch, and the batch counts each task's targets (``Batch.group_targets``);
both are summed here over micro-batches and steps, and reduced over processes
only when read, so ``task_loss/<task>`` is the loss per target of that task in
the window, whatever the packing put into each row. The loop calls this with
the names its task gives it (``TaskRun.loss_groups``) and knows nothing else
about them.
"""

from __future__ import annotations

import torch


class GroupLosses:
    def __init__(self, names: tuple[str, ...], device: torch.device) -> None:
        self.names = names
        self.sums = torch.zeros(len(names), device=device, dtype=torch.float64)
        self.counts = torch.zeros(len(names), device=device, dtype=torch.float64)

    def add(self, extra_outputs: list[torch.Tensor], batch) -> None:
        """``extra_outputs``: what the objective returned after ``(loss_sum, n_targets)``."""
        if not self.names:
            return
        self.sums += extra_outputs[0].detach().to(self.sums)
        self.counts += batch.group_targets.to(self.counts)

    def take(self, accelerator, prefix: str) -> dict[str, float]:
        """``{prefix/name: loss per target}`` of the tasks seen since the last call (all processes), then reset.

        A collective when there are names: every process calls it.
        """
        if not self.names:
            return {}
        sums, counts = accelerator.reduce(self.sums, "sum"), accelerator.reduce(self.counts, "sum")
        self.sums.zero_()
        self.counts.zero_()
        return {f"{prefix}/{name}": float(s / n) for name, s, n in zip(self.names, sums, counts) if n > 0}
