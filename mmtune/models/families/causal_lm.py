"""The causal LM family's run output: the LLM as a peft adapter or full weights, and loading it back.

``final/`` is a plain transformers model directory (full / freeze) or a peft
adapter directory (lora / qlora); ``mmtune.json`` names the base model an
adapter belongs to. Export: ``mmtune.interop.hf_causal_lm``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmtune.config.schema import ModelConfig
from mmtune.models.open import open_language_model

NAME = "causal_lm"


def save(target: Path, model: nn.Module, *, trained: bool = True) -> dict:
    """Write the LLM's files into ``target`` (none when it was not trained); returns this family's metadata."""
    if trained:
        model.save_pretrained(target, safe_serialization=True)
    return {}


def load_llm(path: Path, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    """The LLM saved in ``path``: an adapter on its base, full weights, or (none saved) the base itself."""
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        llm = PeftModel.from_pretrained(open_language_model(base, device_type=device_type), str(path))
        return llm.merge_and_unload() if merge else llm
    if (path / "config.json").is_file():
        return open_language_model(ModelConfig(name=str(path), dtype=base.dtype), device_type=device_type)
    return open_language_model(base, device_type=device_type)


def load(path: Path, meta: dict, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    return load_llm(path, base, device_type=device_type, merge=merge)
