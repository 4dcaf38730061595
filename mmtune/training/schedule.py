"""Learning-rate schedules: linear warmup, then cosine / linear decay or constant."""

from __future__ import annotations

import math
from collections.abc import Callable


def lr_lambda(kind: str, *, warmup: int, total: int, min_ratio: float = 0.0,
              start_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimizer steps (LambdaLR contract).

    Warm-up is linear: from ``start_ratio`` at step 0 to 1 at ``warmup`` when ``start_ratio`` is set (LAVIS's
    ``init_lr + (max_lr - init_lr) * step / warmup``), else ``(step + 1) / warmup`` (never 0 at step 0).
    """

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            if start_ratio > 0:
                return start_ratio + (1.0 - start_ratio) * step / warmup
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * decay

    return factor
