"""Export an image-editing run as a diffusers ``StableDiffusionInstructPix2PixPipeline`` directory.

An edit run's ``final/`` is already in diffusers' layout; what export adds is
a directory with nothing of mmtune in it (no ``mmtune.json``) that any
diffusers user opens with ``StableDiffusionInstructPix2PixPipeline.from_pretrained``,
and the choice of what becomes of a LoRA run's UNet LoRA:

- merged (the default): the pipeline arrives with its LoRA fused into the UNet, and
  ``unet/`` holds the merged weights, so the export needs no peft to run;
- kept (``mmtune export --keep-lora``): the pipeline arrives with its LoRA loaded
  unfused; ``unet/`` holds the base UNet (with the trained ``conv_in``) and the LoRA is
  written beside it as diffusers LoRA weights (``pytorch_lora_weights.safetensors``,
  with its rank and alpha in the file's metadata), which ``pipe.load_lora_weights(OUT)`` reads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmtune.errors import ModelError
from mmtune.utils.atomic import atomic_directory

FORMAT = "diffusers"


def is_edit_pipeline(model) -> bool:
    """Without diffusers imported nothing can be its pipeline: exporting a chat model never imports it."""
    diffusers = sys.modules.get("diffusers")
    return diffusers is not None and isinstance(model, diffusers.StableDiffusionInstructPix2PixPipeline)


def check_fits(editing: bool, fmt: str) -> None:
    """An editing model has one export format, diffusers, and diffusers holds nothing but an editing model.

    Asked with what the directory holds, before anything is loaded (a mismatch costs no model load).
    """
    if editing and fmt != FORMAT:
        raise ModelError(f"export --format {fmt}: this is an image-editing model (InstructPix2Pix); it exports "
                         f"only as a diffusers pipeline (--format {FORMAT}, its default)")
    if not editing and fmt == FORMAT:
        raise ModelError(f"export --format {FORMAT}: only an image-editing run (task: edit) exports as a diffusers "
                         "pipeline; this is a chat model")


def _unet_lora(unet) -> tuple[dict, dict] | None:
    """The UNet's one LoRA adapter as diffusers LoRA layers and its peft config (None without an adapter)."""
    adapters = list(getattr(unet, "peft_config", {}) or {})
    if not adapters:
        return None
    if len(adapters) > 1:
        raise ModelError(f"export --format {FORMAT}: the UNet carries {len(adapters)} LoRA adapters "
                         f"({', '.join(adapters)}); a kept LoRA must be one")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    name = adapters[0]
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=name))
    return layers, unet.peft_config[name].to_dict()


def export_diffusers(model, tokenizer, out_dir: str | Path) -> Path:
    """Write the pipeline ``model`` to ``out_dir`` at once (a half-written export never shows).

    A UNet with a LoRA loaded unfused is written as base UNet + diffusers LoRA
    weights; its adapter is unloaded from ``model`` on the way (the pipeline
    was opened for this export). ``tokenizer`` is the pipeline's own.
    """
    check_fits(is_edit_pipeline(model), FORMAT)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lora = _unet_lora(model.unet)
    if lora is not None:
        model.unload_lora_weights()  # unet/ gets the base weights; the LoRA goes into its own file
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if lora is not None:
            layers, config = lora
            type(model).save_lora_weights(tmp, unet_lora_layers=layers, unet_lora_adapter_metadata=config,
                                          safe_serialization=True)
    return out_dir
