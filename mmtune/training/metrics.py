"""Run outputs: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, log file."""

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
    def __init__(self, run_dir: Path | None, *, tensorboard: bool) -> None:
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if run_dir else None
        self.tb = None
        if run_dir and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()
