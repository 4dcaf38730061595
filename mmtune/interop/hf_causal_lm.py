"""Export a text model as a plain transformers causal LM directory (adapters merged)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from mmtune.errors import ModelError
from mmtune.utils.atomic import atomic_directory


@torch.no_grad()
def export_hf(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` (loaded with adapters merged) and its tokenizer as a standard transformers directory."""
    if not isinstance(model, PreTrainedModel):
        raise ModelError("export: this is a multimodal model; export it with --format hf-llava (MLP projector), "
                         "hf-instructblip (instruction-aware Q-Former) or hf-blip2 (BLIP-2 Q-Former)")
    if hasattr(model, "peft_config"):
        raise ModelError("export: adapter could not be merged")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = out_dir.name
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
