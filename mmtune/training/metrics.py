"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step), the experiment trackers, the log file."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

# Dense bf16 peak FLOP/s of common training GPUs, for MFU. Unknown devices get no MFU.
_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAK_BF16.items() if k in name), None)


def setup_run_logging(run_dir: Path | None, *, quiet: bool = False) -> None:
    """mmtune's logger writes to stderr and, for the main process, to ``run_dir/train.log``.

    ``quiet`` (the other processes of a multi-process run): warnings and errors only, so a run prints once.
    """
    logger = logging.getLogger("mmtune")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, "_mmtune_run", False):
            logger.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = []
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
        handlers.append(logging.StreamHandler(sys.stderr))
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for h in handlers:
        h.setFormatter(fmt)
        h._mmtune_run = isinstance(h, logging.FileHandler)  # type: ignore[attr-defined]
        logger.addHandler(h)


class MetricsLogger:
    """Where a run's records go: ``metrics.jsonl`` and the recipe's experiment trackers (``train.report_to``).

    Built with ``run_dir=None`` on the other processes of a multi-process run: they log nothing, so a run
    reports once (:meth:`open` starts trackers on the main process only).
    """

    def __init__(self, run_dir: Path | None, trackers: list | None = None) -> None:
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None
        self.trackers = list(trackers or [])

    @classmethod
    def open(cls, recipe, run_dir: Path | None) -> "MetricsLogger":
        """The run's logger: its trackers started and given the recipe, on the process that has ``run_dir``."""
        from mmtune.training.tracking import open_trackers

        return cls(run_dir, open_trackers(recipe, run_dir) if run_dir is not None else [])

    def log(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for tracker in self.trackers:
            tracker.log(scalars, step=record["step"])

    def log_final(self, step: int, figures: dict) -> None:
        """The run's final figures (``final_loss``, ``targets_seen``...), to the trackers only: ``summary.json``
        holds them on disk."""
        scalars = {f"final/{k}": v for k, v in figures.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(scalars, step=step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
