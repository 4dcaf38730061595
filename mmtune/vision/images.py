"""Images: safe path resolution, loading, and the preprocessing an encoder needs.

Preprocessing is part of the model (chat and export must do exactly what
training did), so its parameters live in :class:`ImageTransform`, built from
the encoder (size, mean, std) and ``model.vision.image_preprocess``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# LLaVA's placeholder: the text marks each image with this tag, and token
# sequences mark each of an image's embedding positions with this id (never a
# real token id, so it cannot collide with a vocabulary).
IMAGE_TAG = "<image>"
IMAGE_PLACEHOLDER_ID = -200


class ImageProblem(Exception):
    """An image that cannot be used: ``reason`` is the skip counter's key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def resolve_image_path(folder: Path, relative: str) -> Path:
    """``folder / relative``, refusing anything that resolves outside ``folder`` (never opened)."""
    root = folder.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ImageProblem("image path escapes image_folder", f"image path '{relative}' resolves outside {root}")
    return path


def check_image(path: Path) -> None:
    """Cheap check done once at preprocessing: the file exists and has a readable image header."""
    if not path.is_file():
        raise ImageProblem("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageProblem("unreadable image", f"cannot read image {path}: {exc}") from None
    if width == 0 or height == 0:
        raise ImageProblem("unreadable image", f"image {path} is empty ({width}x{height})")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode the whole image as RGB; a corrupt file raises :class:`ImageProblem` naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageProblem("unreadable image", f"cannot decode image {path}: {exc}") from None


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised ``[3, size, size]`` float tensor."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = "pad"  # pad | resize | center_crop

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("RGB")
        if self.mode == "pad":
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


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side symmetrically with ``fill`` (LLaVA-1.5's ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def center_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    image = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.Resampling.BICUBIC)
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))
