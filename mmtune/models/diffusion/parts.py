"""Opening the parts of an editing model: diffusers' UNet, VAE and noise scheduler, transformers' CLIP text encoder.

Nothing here is written again: every part is the library's own class, opened
from a Stable Diffusion directory (or hub name) in diffusers' layout. The one
change InstructPix2Pix makes to Stable Diffusion is :func:`widen_conv_in`: the
UNet also reads the input image's latents, concatenated on the channel axis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtune.config.schema import DiffusionModelConfig
from mmtune.errors import ModelError
from mmtune.models.diffusion.tiny import TINY_SD_ALIAS, resolve_tiny_alias

log = logging.getLogger("mmtune")

EDIT_IN_CHANNELS = 8
"""Noisy latents (4) + the input image's latents (4)."""


@dataclass
class EditParts:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    noise_scheduler: Any
    """The training scheduler: ``DDPMScheduler`` from the directory's ``scheduler/`` config (as diffusers'
    example does), which defines the forward process and the target (epsilon or v)."""
    source: str
    widened: bool
    """True when ``conv_in`` was widened here (the UNet was a plain Stable Diffusion one)."""


def _source(cfg: DiffusionModelConfig) -> str:
    if cfg.name == TINY_SD_ALIAS:
        return str(resolve_tiny_alias())
    path = Path(cfg.name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ModelError(f"model.name: {path} is not a Stable Diffusion directory in diffusers' layout "
                             "(no model_index.json or unet/)")
        return str(path)
    return cfg.name


def open_edit_parts(cfg: DiffusionModelConfig, *, dtype: torch.dtype = torch.float32) -> EditParts:
    """UNet (widened to 8 input channels if needed), VAE, text encoder, tokenizer and DDPM scheduler of ``cfg.name``.

    The VAE and text encoder are opened in ``dtype`` (they are frozen); the
    UNet in float32 (it trains; mixed precision runs under autocast).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = _source(cfg)
    common = {"revision": cfg.revision}
    try:
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", variant=cfg.variant, **common)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", variant=cfg.variant, torch_dtype=dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", variant=cfg.variant,
                                                     dtype=dtype, **common)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
        noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **common)
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.name: could not open the Stable Diffusion model '{cfg.name}' ({first}). "
                         "It must be a local directory in diffusers' layout (unet/, vae/, text_encoder/, "
                         "tokenizer/, scheduler/) or a hub name already in the local cache") from None
    widened = unet.config.in_channels != EDIT_IN_CHANNELS
    if widened:
        widen_conv_in(unet, EDIT_IN_CHANNELS)
        log.info("unet: conv_in widened from 4 to %d input channels (the new ones start at zero)", EDIT_IN_CHANNELS)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    return EditParts(unet, vae, text_encoder, tokenizer, noise_scheduler, source, widened)


def widen_conv_in(unet: nn.Module, in_channels: int) -> None:
    """Give ``unet.conv_in`` ``in_channels`` inputs: its weights copied, the added input channels zero.

    With the added channels at zero the widened UNet computes exactly what the
    original did, whatever they receive, so training starts from Stable
    Diffusion's behaviour (InstructPix2Pix, section 3.2).
    """
    old = unet.conv_in
    if in_channels < old.in_channels:
        raise ModelError(f"unet.conv_in has {old.in_channels} input channels; cannot narrow it to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def inference_scheduler_of(source: str | Path, **kwargs):
    """The sampler saved with a trained editing model: Euler ancestral on ``source``'s noise schedule.

    InstructPix2Pix samples with Euler ancestral (k-diffusion's in the paper's
    ``edit_cli.py``, diffusers' ``EulerAncestralDiscreteScheduler`` in the
    published pipeline), whatever sampler the base Stable Diffusion directory
    names (SD 1.5's is PNDM); the noise schedule (betas, timesteps, prediction
    type) is the base model's, which the UNet was trained on.
    """
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
