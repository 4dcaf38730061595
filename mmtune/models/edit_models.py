"""Telling an image-editing model directory from a chat model's, and opening its pipeline quietly.

An InstructPix2Pix model is an edit run's ``final/`` (``mmtune.json`` of family
``edit_diffusion``) or a diffusers directory whose ``model_index.json`` names
:data:`EDIT_PIPELINE` (what ``mmtune export --format diffusers`` writes). Both
are recognised from their files alone, so ``mmtune chat`` refuses one and
``mmtune edit`` refuses anything else before a model is loaded.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from mmtune.models.families import edit_diffusion

EDIT_PIPELINE = "StableDiffusionInstructPix2PixPipeline"
"""The diffusers pipeline class an image-editing model directory names in its ``model_index.json``."""


def is_editing_model(path: Path) -> bool:
    """``path`` (a model directory, not a run directory) holds an InstructPix2Pix model."""
    meta, index = path / "mmtune.json", path / "model_index.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("family") == edit_diffusion.NAME
    return index.is_file() and json.loads(index.read_text()).get("_class_name") == EDIT_PIPELINE


@contextlib.contextmanager
def quiet_pipeline_loading():
    """Opening a pipeline draws a bar per component and warns that the text encoder has no LoRA (by design):
    noise beside what the user asked for (the denoising bar, an export's line)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    levels = diffusers_logging.get_verbosity(), hf_logging.get_verbosity()
    bars = diffusers_logging.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    hf_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        hf_logging.set_verbosity(levels[1])
        if bars[0]:
            diffusers_logging.enable_progress_bar()
        if bars[1]:
            hf_logging.enable_progress_bar()


def open_edit_pipeline(source: str | Path, *, fuse_lora: bool = True, device: str = "cpu"):
    """The family's pipeline of ``source`` (a kept LoRA loaded, fused unless asked not to), opened quietly."""
    with quiet_pipeline_loading():
        return edit_diffusion.load_pipeline(source, device=device, fuse_lora=fuse_lora)
