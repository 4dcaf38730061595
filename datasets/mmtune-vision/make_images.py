"""Regenerate datasets/mmtune-vision/images/ from scikit-image's bundled sample data.

Why this script exists: the committed JPEGs must be reproducible from a known,
licensed source, so anyone can check where each picture came from. Every image is
either a whole `skimage.data` photograph or a fixed crop of one; grayscale
pictures are stored as RGB (vision towers expect three channels); the longer side
is at most 512 px; JPEG quality 90. Only photographs whose scikit-image docstring
states a public-domain, CC0 or "no known copyright restrictions" status are used
(see README.md for the per-image licence table).

Run from anywhere:  python datasets/mmtune-vision/make_images.py
Output is byte-identical for a given scikit-image / Pillow version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

MAX_SIDE = 512
JPEG_QUALITY = 90
OUT_DIR = Path(__file__).resolve().parent / "images"

# file name -> (skimage.data function, crop box (top, bottom, left, right) in
# source pixels, or None for the whole picture)
IMAGES: dict[str, tuple[str, tuple[int, int, int, int] | None]] = {
    "astronaut.jpg": ("astronaut", None),
    "astronaut_face.jpg": ("astronaut", (0, 300, 100, 360)),
    "astronaut_patch.jpg": ("astronaut", (330, 440, 120, 340)),
    "shuttle_model.jpg": ("astronaut", (0, 290, 350, 480)),
    "coffee.jpg": ("coffee", None),
    "coffee_crema.jpg": ("coffee", (60, 220, 180, 420)),
    "coffee_spoon.jpg": ("coffee", (200, 340, 290, 440)),
    "chelsea.jpg": ("chelsea", None),
    "chelsea_eyes.jpg": ("chelsea", (60, 180, 110, 370)),
    "rocket.jpg": ("rocket", None),
    "rocket_nose.jpg": ("rocket", (110, 270, 250, 390)),
    "camera.jpg": ("camera", None),
    "camera_skyline.jpg": ("camera", (100, 250, 345, 512)),
    "camera_operator.jpg": ("camera", (50, 270, 140, 350)),
    "coins.jpg": ("coins", None),
    "coins_top_row.jpg": ("coins", (0, 85, 0, 384)),
    "clock.jpg": ("clock", None),
    "hubble_deep_field.jpg": ("hubble_deep_field", None),
    "hubble_spiral.jpg": ("hubble_deep_field", (330, 480, 40, 220)),
    "hubble_star.jpg": ("hubble_deep_field", (420, 640, 650, 870)),
    "immunohistochemistry.jpg": ("immunohistochemistry", None),
    "ihc_gland.jpg": ("immunohistochemistry", (290, 512, 230, 410)),
    "retina.jpg": ("retina", None),
    "retina_optic_disc.jpg": ("retina", (450, 900, 50, 500)),
    "cell.jpg": ("cell", None),
    "text.jpg": ("text", None),
    "brick.jpg": ("brick", None),
    "grass.jpg": ("grass", None),
    "gravel.jpg": ("gravel", None),
}


def to_rgb_image(array: np.ndarray) -> Image.Image:
    """Return an RGB PIL image; grayscale is replicated into three channels."""
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(np.ascontiguousarray(array[..., :3]), mode="RGB")


def fit_longer_side(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """Downscale (never upscale) so the longer side is at most max_side."""
    longer = max(image.size)
    if longer <= max_side:
        return image
    scale = max_side / longer
    size = (round(image.width * scale), round(image.height * scale))
    return image.resize(size, Image.Resampling.LANCZOS)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    sources: dict[str, np.ndarray] = {}
    for name, (source, box) in IMAGES.items():
        if source not in sources:
            sources[source] = getattr(skimage.data, source)()
        array = sources[source]
        if box is not None:
            top, bottom, left, right = box
            array = array[top:bottom, left:right]
        image = fit_longer_side(to_rgb_image(array))
        image.save(OUT_DIR / name, "JPEG", quality=JPEG_QUALITY, optimize=True)
        print(f"{name}: {image.width}x{image.height} from skimage.data.{source}() crop={box}")


if __name__ == "__main__":
    main()
