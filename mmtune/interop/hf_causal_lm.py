"""Export a text model as a plain transformers causal LM directory (adapters merged).

A virtual-token adapter (prompt / P- / prefix tuning) has no weights to merge
into: the export says so in one line and writes the base model with the peft
adapter beside it in ``adapter/`` instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from mmtune.errors import ModelError
from mmtune.models.virtual_tokens import VirtualTokenLM
from mmtune.utils.atomic import atomic_directory

log = logging.getLogger("mmtune")
ADAPTER_SUBDIR = "adapter"


@torch.no_grad()
def export_hf(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model`` (loaded with adapters merged) and its tokenizer as a standard transformers directory."""
    if isinstance(model, VirtualTokenLM):
        return _export_with_adapter(model, tokenizer, Path(out_dir))
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


def _export_with_adapter(model: VirtualTokenLM, tokenizer, out_dir: Path) -> Path:
    """The base model as a transformers directory, the virtual-token adapter in ``out_dir/adapter``."""
    log.warning("export: %s adds virtual tokens and cannot be merged into the weights; writing the base model to %s "
                "and the peft adapter to %s (load with peft's PeftModel.from_pretrained)", model.method, out_dir,
                out_dir / ADAPTER_SUBDIR)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp:
        model.base_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        model.peft_model.save_pretrained(tmp / ADAPTER_SUBDIR, safe_serialization=True)
    return out_dir
