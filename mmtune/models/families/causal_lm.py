"""The causal LM family's run output: the LLM as a peft adapter or full weights, and loading it back.

``final/`` is a plain transformers model directory (full / freeze) or a peft
adapter directory (lora / qlora / any peft method, its config in
``adapter_config.json``); ``mmtune.json`` names the base model an adapter
belongs to. A PiSSA / OLoRA adapter is saved converted to fit the original
base model; a LoftQ adapter is saved merged (full weights), as it fits only
the quantized base it trained on. A virtual-token adapter (prompt / prefix tuning) cannot be
merged: it loads as a :class:`~mmtune.models.virtual_tokens.VirtualTokenLM`.
Export: ``mmtune.interop.hf_causal_lm``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from mmtune.config.schema import ModelConfig
from mmtune.models.open import open_language_model
from mmtune.models.virtual_tokens import VirtualTokenLM, prompt_learning_type

NAME = "causal_lm"


def save(target: Path, model: nn.Module, *, trained: bool = True, initial_adapter: Path | None = None,
         merge_adapter: bool = False) -> dict:
    """Write the LLM's files into ``target`` (none when it was not trained); returns this family's metadata.

    ``initial_adapter``: the adapter as PiSSA / OLoRA initialised it; peft converts the trained adapter against it
    (``path_initial_model_for_weight_conversion``) so that it applies to the original base weights.
    ``merge_adapter``: write the adapter merged into full weights (LoftQ: the adapter fits only the quantized base
    weights it trained on, see ``mmtune.training.loftq``); merged in a copy, the trained model stays as it is.
    """
    if trained and merge_adapter:
        copy.deepcopy(model).merge_and_unload().save_pretrained(target, safe_serialization=True)
    elif trained:
        conversion = {} if initial_adapter is None else {"path_initial_model_for_weight_conversion": str(initial_adapter)}
        model.save_pretrained(target, safe_serialization=True, **conversion)
    return {}


def load_llm(path: Path, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    """The LLM saved in ``path``: an adapter on its base, full weights, or (none saved) the base itself."""
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        llm = PeftModel.from_pretrained(open_language_model(base, device_type=device_type), str(path))
        if prompt_learning_type(llm) is not None:
            return VirtualTokenLM(llm)  # nothing to merge: the virtual tokens stay in front of every sequence
        return llm.merge_and_unload() if merge else llm
    if (path / "config.json").is_file():
        return open_language_model(ModelConfig(name=str(path), dtype=base.dtype), device_type=device_type)
    return open_language_model(base, device_type=device_type)


def load(path: Path, meta: dict, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    return load_llm(path, base, device_type=device_type, merge=merge)
