"""``mmtune report``'s options: the one home of their defaults (the CLI's help reads them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportOptions:
    samples: int = 8
    """Validation samples answered by the run's ``final/`` model (0: curves and tables only, no model loaded)."""
    max_new_tokens: int = 128
    """Most tokens of each answer: enough to read a reply, and bounded for a model that has not learnt to stop."""
    edit_steps: int | None = None
    """Denoising steps of an edit run's outputs (None: ``EditOptions.steps``, the paper's 100)."""
    device: str = "auto"
    """Where the model answers: ``auto`` (CUDA when there is one, else CPU), ``cpu`` or ``cuda[:N]``."""

    def check(self) -> None:
        from mmtune.errors import ConfigError

        if self.samples < 0:
            raise ConfigError(f"report: --samples must be 0 or more, got {self.samples}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"report: --max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.edit_steps is not None and self.edit_steps < 1:
            raise ConfigError(f"report: --steps must be at least 1, got {self.edit_steps}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"report: --device must be auto, cpu or cuda[:N], got '{self.device}'")
