"""The hint task's run output: the LLM as the causal LM family saves it, plus ``hint/`` (the hypernetwork).

Such a model has no fixed behaviour until an instruction is given: it is opened through
``mmtune hint adapt`` (``mmtune.models.hint.adapt``), which writes one task's adapters as a standard peft
adapter. Opening it as a chat model is refused with that command, rather than silently chatting with the
LLM alone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmtune.config.schema import ModelConfig
from mmtune.errors import ModelError

NAME = "hint"


def load(path: Path, meta: dict, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    raise ModelError(f"{path}: a HINT hypernetwork, which makes a model for an instruction: write one with "
                     f"mmtune hint adapt {path} --instruction \"...\" --out ADAPTER_DIR, then use ADAPTER_DIR")
