"""The editing model family's run output: an InstructPix2Pix pipeline directory in diffusers' layout.

``final/`` is what ``StableDiffusionInstructPix2PixPipeline.from_pretrained``
opens: ``unet/`` (8 input channels; the EMA weights when the run kept an EMA,
as the published model is), ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/`` (Euler ancestral on the base model's noise schedule, as the published pipeline samples) and ``model_index.json``.
A LoRA run keeps its UNet LoRA beside them as diffusers LoRA weights
(``pytorch_lora_weights.safetensors``, which ``load_lora_weights`` reads), and
``unet/`` holds the base UNet with its trained ``conv_in``. ``mmtune.json``
names the family, the base model and the method.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

NAME = "edit_diffusion"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


def plain_unet(unet: nn.Module) -> nn.Module:
    """The UNet without its peft LoRA layers (the base weights and everything trained fully, e.g. ``conv_in``)."""
    from diffusers import UNet2DConditionModel

    clean = UNet2DConditionModel.from_config(unet.config)
    state = {k.replace(".base_layer.", "."): v for k, v in unet.state_dict().items() if ".lora_" not in k}
    clean.load_state_dict(state)
    return clean


def save(target: Path, *, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer, scheduler,
         lora: bool) -> dict:
    """Write the pipeline directory into ``target``; returns this family's metadata."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    saved_unet = plain_unet(unet) if lora else unet
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=saved_unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(target, safe_serialization=True)
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        # The adapter's config (alpha above all) travels in the file: without it diffusers reloads the
        # LoRA with alpha = rank, at another strength than it trained with.
        StableDiffusionInstructPix2PixPipeline.save_lora_weights(
            target, unet_lora_layers=layers, unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
            safe_serialization=True)
    return {"lora_weights": LORA_WEIGHTS if lora else None}


def load_pipeline(path: Path, *, device: str = "cpu", fuse_lora: bool = True):
    """The run's pipeline (its LoRA loaded, and fused unless asked not to)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(path, safety_checker=None,
                                                                 requires_safety_checker=False)
    if (Path(path) / LORA_WEIGHTS).is_file():
        pipe.load_lora_weights(path, weight_name=LORA_WEIGHTS)
        if fuse_lora:
            pipe.fuse_lora()
            pipe.unload_lora_weights()
    return pipe.to(device)
