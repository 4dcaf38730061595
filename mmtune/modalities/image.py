"""Images: LLaVA's ``<image>`` tag, header check, decoding, and the preprocessing an image encoder needs.

Preprocessing is part of the model (chat and export must do exactly what
training did), so its parameters live in :class:`ImageTransform`, built from
the encoder (size, mean, std) and ``model.media.image.image_preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmtune.config.media import BranchConfig
from mmtune.modalities.base import MediaProblem, Modality

IMAGE_TAG = "<image>"
IMAGE_PLACEHOLDER_ID = -200
"""LLaVA's ``IMAGE_TOKEN_INDEX``: never a real token id, so it cannot collide with a vocabulary."""

ImagePreprocess = Literal["pad", "resize", "center_crop"]
ImageAugment = Literal["none", "random_resized_crop_flip"]
RANDOM_CROP_SCALE = (0.5, 1.0)
"""LAVIS's ``blip_image_train`` (InstructBLIP, BLIP-2): crops of 50-100% of the area, bicubic, then a flip."""


class ImageBranchConfig(BranchConfig):
    """``model.media.image``: an image encoder + connector, and how images are fitted to the encoder."""

    image_preprocess: ImagePreprocess = "pad"
    """``pad``: expand to a square with the mean colour (LLaVA-1.5), ``resize``: stretch,
    ``center_crop``: shorter side to size, then crop the centre (CLIP)."""
    train_augment: ImageAugment = "none"
    """Training images only: ``random_resized_crop_flip`` is InstructBLIP's (a random crop of 50-100% of the
    area resized to the encoder's size, then a horizontal flip with p = 0.5; it replaces ``image_preprocess``
    while training). Flips swap left and right: not for data that asks about positions."""


def check_image(path: Path) -> tuple[int, int]:
    """The file exists and has a readable image header (the body is decoded later, in workers); its size."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise MediaProblem("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaProblem("unreadable image", f"cannot read image {path}: {exc}") from None
    if width == 0 or height == 0:
        raise MediaProblem("unreadable image", f"image {path} is empty ({width}x{height})")
    return width, height


def load_rgb(path: str | Path):
    """Decode the whole image as RGB; a corrupt or truncated file raises :class:`MediaProblem` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaProblem("unreadable image", f"cannot decode image {path}: {exc}") from None


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised ``[3, size, size]`` float tensor."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str
    """``pad``, ``resize`` or ``center_crop`` (``model.media.image.image_preprocess``)."""
    augment: str = "none"
    """``random_resized_crop_flip`` (training only; draws from the worker's torch RNG)."""

    def __call__(self, image) -> Any:
        import torch
        from PIL import Image

        image = image.convert("RGB")
        if self.augment == "random_resized_crop_flip":
            from torchvision.transforms import RandomResizedCrop
            from torchvision.transforms.functional import hflip, resized_crop

            top, left, height, width = RandomResizedCrop.get_params(image, list(RANDOM_CROP_SCALE), [3 / 4, 4 / 3])
            image = resized_crop(image, top, left, height, width, [self.size, self.size],
                                 interpolation=Image.Resampling.BICUBIC)
            if torch.rand(()) < 0.5:
                image = hflip(image)
        elif self.mode == "pad":
            image = expand_to_square(image, tuple(int(255 * m) for m in self.mean))  # as LLaVA: int(), not round()
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        elif self.mode == "resize":
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        elif self.mode == "center_crop":
            image = center_crop(image, self.size)
        else:
            raise ValueError(f"unknown image_preprocess '{self.mode}'")
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(array.transpose(2, 0, 1).copy())


def expand_to_square(image, fill: tuple[int, ...]):
    """Pad the shorter side symmetrically with ``fill`` (LLaVA-1.5's ``expand2square``)."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def center_crop(image, size: int):
    """Shorter side to ``size`` (bicubic), then the centre ``size`` x ``size`` square.

    The arithmetic is transformers' (and torchvision's ``Resize``): the longer
    side becomes ``int(size * long / short)`` (rounded down) and the crop
    starts at ``(side - size) // 2``, so an exported Llava processor with
    ``shortest_edge`` + ``do_center_crop`` gives the very same pixels.
    """
    from PIL import Image

    width, height = image.size
    if width <= height:
        new = (size, int(size * height / width))
    else:
        new = (int(size * width / height), size)
    image = image.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


class ImageModality(Modality):
    name = "image"
    tag = IMAGE_TAG
    placeholder_id = IMAGE_PLACEHOLDER_ID
    plural = "images"
    openai_part = "image_url"
    branch_config = ImageBranchConfig
    encoder_needs = ("image_size", "image_mean", "image_std")

    def check(self, path: Path) -> dict[str, Any]:
        check_image(path)
        return {}

    def load(self, path: str | Path, options: dict[str, Any]):
        return load_rgb(path)

    def transform(self, branch: ImageBranchConfig, encoder, *, train: bool = False) -> ImageTransform:
        return ImageTransform(encoder.image_size, encoder.image_mean, encoder.image_std, branch.image_preprocess,
                              branch.train_augment if train else "none")


IMAGE = ImageModality()
