"""The shipped editing triplets (``datasets/mmtune-edits``): scikit-image photos, deterministic edits, instructions.

Why it exists: the ``edit`` task needs real triplets that ship with the repository, need no model to make,
and are exactly what their instruction says, so a CPU recipe and the tests train on photographs rather than
on noise. Five ``skimage.data`` photographs (public domain or CC0, per scikit-image's docstrings) are cropped
square and resized to :data:`SIDE` px; each gets four of the edits in :data:`EDITS` (a flip, a grayscale, a
blur, a brightening, colour shifts), each with its own hand-written instruction (:data:`TRIPLETS`), so one
input image has several different edits and the instruction decides which.

Everything the folder holds is written by :func:`build_photo_edits` (the data card included), and the
shipped files are what it writes (a test rebuilds them and compares rows and pixels)::

    python -m mmtune.datagen.photo_edits datasets/mmtune-edits
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDE = 96
"""Side of every image, px: small files, still recognisable photographs (the tiny recipe trains at 32 px)."""
METADATA = "metadata.jsonl"
README = "README.md"


@dataclass(frozen=True)
class Photo:
    function: str
    """The ``skimage.data`` function."""
    crop: tuple[int, int, int, int]
    """``(top, bottom, left, right)`` in source pixels: a square around the subject."""
    origin: str
    """Where the photograph comes from and its licence, as scikit-image's docstring states them."""


PHOTOS: dict[str, Photo] = {
    "astronaut": Photo("astronaut", (0, 512, 0, 512),
                       "NASA portrait of astronaut Eileen Collins (NASA Great Images database): \"No known "
                       "copyright restrictions, released into the public domain.\""),
    "chelsea": Photo("chelsea", (0, 300, 50, 350),
                     "Chelsea the cat, photo by Stefan van der Walt: \"No copyright restrictions. CC0 by the "
                     "photographer.\""),
    "coffee": Photo("coffee", (0, 400, 85, 485),
                    "Coffee cup, photo by Rachel Michetti, courtesy of Pikolo Espresso Bar: \"No copyright "
                    "restrictions. CC0 by the photographer.\""),
    "rocket": Photo("rocket", (0, 427, 106, 533),
                    "SpaceX Falcon 9 carrying DSCOVR at Launch Complex 40, Cape Canaveral: captured by SpaceX and "
                    "released into the public domain."),
    "retina": Photo("retina", (0, 1411, 0, 1411),
                    "Fundus photograph of a normal left eye (Mikael Häggström, Wikimedia Commons): CC0 1.0 "
                    "Universal Public Domain Dedication."),
}


def _flip(a: np.ndarray) -> np.ndarray:
    return a[:, ::-1]


def _grayscale(a: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(a).convert("L").convert("RGB"))  # ITU-R 601-2 luma, three equal channels


def _blur(a: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius=2)))


def _scaled(a: np.ndarray, gains: tuple[float, float, float]) -> np.ndarray:
    return np.clip(np.rint(a.astype(np.float64) * np.asarray(gains)), 0, 255).astype(np.uint8)


def _tint(color: tuple[int, int, int], weight: float) -> Callable[[np.ndarray], np.ndarray]:
    def tint(a: np.ndarray) -> np.ndarray:
        mixed = (1 - weight) * a.astype(np.float64) + weight * np.asarray(color, dtype=np.float64)
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    return tint


EDITS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "flip": (_flip, "mirrored left to right"),
    "grayscale": (_grayscale, "converted to grayscale (ITU-R 601-2 luma), stored as RGB"),
    "blur": (_blur, "Gaussian blur, radius 2 px"),
    "brighten": (lambda a: _scaled(a, (1.45, 1.45, 1.45)), "every channel x1.45 (clipped)"),
    "warm": (lambda a: _scaled(a, (1.2, 1.0, 0.7)), "colour shift: red x1.2, blue x0.7"),
    "blue_tint": (_tint((40, 90, 255), 0.35), "colour shift: 35% blend toward blue (40, 90, 255)"),
    "green_tint": (_tint((40, 200, 60), 0.35), "colour shift: 35% blend toward green (40, 200, 60)"),
}
"""Edit name -> (the edit of a ``[H, W, 3]`` uint8 array, what it does, for the data card)."""

TRIPLETS: list[tuple[str, str, str]] = [
    ("astronaut", "flip", "flip the image horizontally"),
    ("astronaut", "grayscale", "make it black and white"),
    ("astronaut", "blur", "blur the photo"),
    ("astronaut", "warm", "make the colours warmer"),
    ("chelsea", "flip", "mirror the picture left to right"),
    ("chelsea", "brighten", "make it brighter"),
    ("chelsea", "blue_tint", "give it a blue tint"),
    ("chelsea", "grayscale", "remove all the colour"),
    ("coffee", "blur", "make it out of focus"),
    ("coffee", "brighten", "brighten the photo"),
    ("coffee", "flip", "make the cup face the other way"),
    ("coffee", "green_tint", "shift the colours toward green"),
    ("rocket", "grayscale", "turn it into a grayscale photo"),
    ("rocket", "warm", "give it a warm orange tone"),
    ("rocket", "brighten", "increase the brightness"),
    ("rocket", "blur", "make it blurry"),
    ("retina", "blue_tint", "make it look cold and blue"),
    ("retina", "flip", "mirror it"),
    ("retina", "green_tint", "give it a green cast"),
    ("retina", "grayscale", "desaturate it completely"),
]
"""(photo, edit, instruction): 20 triplets, four edits of each photograph, every instruction written for its edit."""


def photo(name: str) -> np.ndarray:
    """The square ``SIDE`` px input image of a photograph (Lanczos downscale of its crop)."""
    import skimage.data
    from PIL import Image

    spec = PHOTOS[name]
    top, bottom, left, right = spec.crop
    pixels = getattr(skimage.data, spec.function)()[top:bottom, left:right]
    return np.asarray(Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.LANCZOS))


def build_photo_edits(out_dir: str | Path) -> list[dict]:
    """Write the inputs, the edited images, ``metadata.jsonl`` (diffusers' columns) and the data card into
    ``out_dir`` (other files there are left alone); return the rows. Deterministic for a given
    scikit-image / Pillow."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    inputs = {name: photo(name) for name in dict.fromkeys(p for p, _, _ in TRIPLETS)}
    for name, pixels in inputs.items():
        Image.fromarray(pixels).save(out / f"{name}.png", optimize=True)
    rows = []
    for name, edit, instruction in TRIPLETS:
        edited = np.ascontiguousarray(EDITS[edit][0](inputs[name]))
        Image.fromarray(edited).save(out / f"{name}_{edit}.png", optimize=True)
        rows.append({"input_image": f"{name}.png", "edit_prompt": instruction, "edited_image": f"{name}_{edit}.png",
                     "edit": edit, "photo": f"skimage.data.{PHOTOS[name].function}"})
    (out / METADATA).write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out / README).write_text(readme_text())
    return rows


def readme_text() -> str:
    """The data card, from the tables above."""
    lines = [
        "# mmtune-edits", "",
        f"{len(TRIPLETS)} real instruction-editing triplets (input image, instruction, edited image) for the "
        "`edit` task (InstructPix2Pix): five scikit-image photographs, each with four deterministic edits that "
        "need no model, each edit with its own instruction. For smoke tests and the tiny CPU recipe, not for "
        "teaching real edits.", "",
        "## Files", "",
        "- `metadata.jsonl`: one row per triplet in diffusers' layout: `input_image`, `edit_prompt`, "
        "`edited_image` (file names in this folder), plus `edit` (the edit's name below) and `photo` (its "
        "source). Card: `../mmtune-edits.yaml` (`format: edit_triplets`).",
        f"- `<photo>.png`: the inputs, {SIDE}x{SIDE} RGB (a square crop of the photograph, Lanczos downscale).",
        "- `<photo>_<edit>.png`: the edited images, same size.",
        "- Regenerate (identical rows and pixels for a given scikit-image / Pillow): "
        "`python -m mmtune.datagen.photo_edits datasets/mmtune-edits` (`mmtune/datagen/photo_edits.py`).", "",
        "## Edits", "", "| edit | what it does | instructions |", "|---|---|---|",
    ]
    for edit, (_, what) in EDITS.items():
        said = "; ".join(f"\"{text}\" ({name})" for name, e, text in TRIPLETS if e == edit)
        lines.append(f"| {edit} | {what} | {said} |")
    lines += ["", "## Photographs and licences", "",
              "| photo | `skimage.data` function | crop (top, bottom, left, right) | origin and licence "
              "(per scikit-image 0.26) |", "|---|---|---|---|"]
    for name, spec in PHOTOS.items():
        lines.append(f"| {name} | `{spec.function}()` | {spec.crop} | {spec.origin} |")
    lines += ["", "The edits, the instructions and these files are mmtune's, released under CC0-1.0.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m mmtune.datagen.photo_edits OUT_DIR")
    written = build_photo_edits(sys.argv[1])
    print(f"{len(written)} triplets in {sys.argv[1]}")
