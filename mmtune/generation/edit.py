"""Editing an image by an instruction with an InstructPix2Pix model: ``mmtune edit`` and its Python API.

    image --(resize to the VAE's factor)--> diffusers' StableDiffusionInstructPix2PixPipeline --> edited image
    instruction ----------------------------^   (two-scale classifier-free guidance, seeded sampling)

Sampling is diffusers' pipeline, used as it is: its scheduler (the one saved
with the model: a run's ``final/`` holds Euler ancestral, the published sampler), its VAE encoding of
the input image (the latent distribution's mode, as in training) and its
guidance. Each denoising step runs the UNet on three conditionings, full
(instruction + image), image only (empty prompt + image) and unconditional
(empty prompt + zero image latents), and combines them as in the paper
(Brooks et al. 2023, eq. 3)::

    eps = eps_u + s_I (eps_img - eps_u) + s_T (eps_full - eps_img)

with ``s_T = text_guidance`` and ``s_I = image_guidance``. The pipeline guides
only when ``s_T > 1`` and ``s_I >= 1`` (otherwise it uses ``eps_full`` alone),
so :meth:`EditOptions.check` refuses the settings where that would differ from
the formula; ``s_T = s_I = 1`` is the formula's own unguided case.

:class:`EditOptions` is the one home of the defaults (the CLI's help reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.errors import ConfigError, DataError, ModelError


@dataclass
class EditOptions:
    text_guidance: float = 7.5
    """s_T: how far the instruction pushes the edit (the paper's default, 7.5)."""
    image_guidance: float = 1.5
    """s_I: how closely the result keeps to the input image (the paper's default, 1.5)."""
    steps: int = 100
    """Denoising steps (the paper's ``edit_cli.py`` and diffusers' pipeline both default to 100)."""
    seed: int = 0
    """Seeds a CPU generator, so a seed gives the same image on CPU and GPU."""
    resolution: int | None = None
    """None: the image's own size, each side rounded down to a multiple of the VAE's factor (8 for Stable
    Diffusion), which is what diffusers' pipeline does. N: first scaled (aspect kept) so its longer side is N,
    as the paper's ``edit_cli.py`` does at 512; then rounded down the same way."""
    device: str = "auto"
    """``auto``: CUDA when there is one, else CPU. Unused when a loaded pipeline is given."""
    progress: bool = True
    """A progress bar over the denoising steps (on stderr)."""

    def check(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"edit: --steps must be at least 1, got {self.steps}")
        if self.resolution is not None and self.resolution < 1:
            raise ConfigError(f"edit: --resolution must be positive, got {self.resolution}")
        guided = self.text_guidance > 1 and self.image_guidance >= 1
        if not guided and (self.text_guidance, self.image_guidance) != (1, 1):
            raise ConfigError(
                f"edit: --text-guidance {self.text_guidance:g} with --image-guidance {self.image_guidance:g}: "
                "diffusers' InstructPix2Pix pipeline applies guidance only with a text guidance above 1 and an "
                "image guidance of at least 1 (both 1: no guidance)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"edit: --device must be auto, cpu or cuda[:N], got '{self.device}'")


def _not_editing(path: Path, meta: dict) -> ModelError:
    """Why ``path`` is no editing model, in one line that says what to use instead."""
    if meta:
        return ModelError(f"--model {path}: a chat model (family {meta['family']}), not an image-editing model; "
                          f"use mmtune chat --model {path}")
    index, config = path / "model_index.json", path / "config.json"
    if index.is_file():
        import json

        pipeline = json.loads(index.read_text()).get("_class_name", "pipeline")
        return ModelError(f"--model {path}: a diffusers {pipeline}, not an InstructPix2Pix editing model (an edit "
                          "run, its final/, or its export with mmtune export --format diffusers)")
    if config.is_file():
        return ModelError(f"--model {path}: a transformers model, not an image-editing model; use mmtune chat "
                          f"--model {path}")
    return ModelError(f"--model {path}: not an image-editing model (neither an edit run's mmtune.json nor an "
                      "InstructPix2Pix model_index.json)")


def resolve_device(device: str) -> str:
    """``auto`` made concrete; CUDA asked for where there is none is one line, not a torch traceback."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"edit --device {device}: no CUDA device is available here (use cpu or auto)")
    return device


def open_editor(model: str | Path, *, device: str = "auto"):
    """The ``StableDiffusionInstructPix2PixPipeline`` of an edit run, its ``final/``, a diffusers export of one
    (a kept LoRA loaded and fused) or a hub name in the local cache."""
    from mmtune.models.edit_models import is_editing_model, open_edit_pipeline
    from mmtune.models.run_outputs import model_dir_of, read_meta

    device = resolve_device(device)
    path = Path(model).expanduser()
    if path.exists():
        path = model_dir_of(path)
        if not is_editing_model(path):
            raise _not_editing(path, read_meta(path))
        return open_edit_pipeline(path, device=device)
    try:
        pipe = open_edit_pipeline(str(model), device=device)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"--model {model}: no such directory, and no InstructPix2Pix pipeline of that name in the "
                         f"local hub cache ({first})") from None
    if pipe.unet.config.in_channels != 2 * pipe.vae.config.latent_channels:
        raise ModelError(f"--model {model}: its UNet reads {pipe.unet.config.in_channels} channels, not the noisy "
                         "and the input image's latents: not an InstructPix2Pix editing model")
    return pipe


def read_image(image: str | Path):
    """The input image as RGB; a missing or undecodable file is one line naming it."""
    from mmtune.modalities.base import MediaProblem
    from mmtune.modalities.image import check_image, load_rgb

    try:
        check_image(Path(image))
        return load_rgb(image)
    except MediaProblem as exc:
        raise DataError(f"--image: {exc.detail}", reason=exc.reason) from None


def fit_image(image, resolution: int | None, factor: int):
    """``image`` resized as :attr:`EditOptions.resolution` says; each side a multiple of the VAE's ``factor``."""
    from PIL import Image

    width, height = image.size
    if resolution is not None:
        scale = resolution / max(width, height)
        width, height = round(width * scale), round(height * scale)
    width, height = width // factor * factor, height // factor * factor
    if width < factor or height < factor:
        raise DataError(f"--image: {image.size[0]}x{image.size[1]} px is too small: each side must be at least "
                        f"the VAE's factor, {factor} px, after resizing")
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def edit_pixels(model: Any, image: Any, instruction: str, options: EditOptions | None = None):
    """The edited image as a float array ``[H, W, 3]`` in [0, 1] (what the pipeline decodes, before 8-bit).

    ``model``: a loaded pipeline (:func:`open_editor`) or what :func:`open_editor` opens; ``image``: a path
    or a PIL image.
    """
    import torch

    options = options or EditOptions()
    options.check()
    if not instruction.strip():
        raise ConfigError("edit: the instruction is empty")
    picture = image.convert("RGB") if hasattr(image, "convert") else read_image(image)
    pipe = open_editor(model, device=options.device) if isinstance(model, (str, Path)) else model
    picture = fit_image(picture, options.resolution, pipe.vae_scale_factor)
    pipe.set_progress_bar_config(disable=not options.progress, desc="edit", unit="step")
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    result = pipe(instruction, image=picture, num_inference_steps=options.steps,
                  guidance_scale=options.text_guidance, image_guidance_scale=options.image_guidance,
                  generator=generator, output_type="np")
    return result.images[0]


def edit_image(model: Any, image: Any, instruction: str, options: EditOptions | None = None):
    """The edited image as a PIL image (8-bit, rounded as diffusers' pipeline rounds)."""
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(edit_pixels(model, image, instruction, options)[None])[0]


def check_output_path(out: str | Path) -> Path:
    """Refuse an output name PIL cannot write before any model is loaded."""
    from PIL import Image

    out = Path(out)
    if out.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"edit --out {out}: unknown image extension '{out.suffix}' (e.g. .png, .jpg, .webp)")
    return out


def describe(options: EditOptions) -> str:
    return (f"{options.steps} steps, text guidance {options.text_guidance:g}, image guidance "
            f"{options.image_guidance:g}, seed {options.seed}")


__all__ = ["EditOptions", "check_output_path", "edit_image", "edit_pixels", "fit_image", "open_editor", "read_image"]
