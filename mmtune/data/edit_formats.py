"""Readers of editing-triplet layouts: rows -> :class:`~mmtune.data.edit_triplets.Triplet`, with bad input counted.

``edit_triplets``: diffusers' layout, one row per triplet with ``input_image``,
``edit_prompt`` and ``edited_image`` columns (renamed by a card's ``columns``),
image paths relative to the data file's folder (or ``media_folder``).

Every image is confined to its media folder and its header is checked here;
the bodies are decoded later, in DataLoader workers. A bad triplet is one line
naming file, row and field (``on_bad_sample: error``) or a counted skip.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmtune.data.edit_triplets import Triplet
from mmtune.data.sources import MalformedRow, ResolvedSource, iter_rows
from mmtune.errors import DataError
from mmtune.modalities.base import MediaProblem
from mmtune.modalities.image import IMAGE

log = logging.getLogger("mmtune")

TRIPLET_FIELDS = ("input_image", "edit_prompt", "edited_image")


@dataclass
class TripletRead:
    name: str
    triplets: list[Triplet] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    """Reason -> triplets skipped for it."""
    resized: int = 0
    """Pairs whose two images differ in size: the edited image is resized to the input's."""

    def report_line(self, used: int) -> str:
        parts = [f"{self.name}: {used} triplet(s)"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} ({reason})" for reason, n in self.skipped.items()))
        if self.resized:
            parts.append(f"{self.resized} pair(s) of different sizes (the edited image is resized to the input's)")
        return "; ".join(parts)


def read_triplets(source: ResolvedSource, *, on_bad_sample: str) -> TripletRead:
    if source.format != "edit_triplets":
        raise DataError(f"dataset '{source.name}': format '{source.format}' is not a triplet format for the edit "
                        "task (use edit_triplets or ip2p_folders)", reason="wrong format")
    read = TripletRead(source.name)
    columns = {f: source.settings.columns.get(f, f) for f in TRIPLET_FIELDS}
    root = source.media_root()

    def bad(where: str, reason: str, detail: str) -> None:
        if on_bad_sample == "error":
            raise DataError(f"{where}: {detail}", reason=reason)
        read.skipped[reason] += 1
        log.warning("skipped %s: %s", where, detail)

    for where, row in iter_rows(source):
        if isinstance(row, MalformedRow):
            bad(row.where, row.reason, row.detail)
            continue
        missing = [columns[f] for f in TRIPLET_FIELDS if row.get(columns[f]) in (None, "")]
        if columns["edit_prompt"] in missing:
            bad(f"{where}, field '{columns['edit_prompt']}'", "empty edit prompt", "the edit prompt is empty")
            continue
        if missing:
            bad(f"{where}, field '{missing[0]}'", "missing field", "no value")
            continue
        try:
            paths = []
            for f in ("input_image", "edited_image"):
                path = IMAGE.resolve(root, str(row[columns[f]]))
                try:
                    paths.append((path, _image_size(path)))
                except MediaProblem as problem:
                    raise MediaProblem(problem.reason, f"field '{columns[f]}': {problem.detail}") from None
        except MediaProblem as problem:
            bad(where, problem.reason, problem.detail)
            continue
        (a, size_a), (b, size_b) = paths
        read.resized += size_a != size_b
        read.triplets.append(Triplet(str(a), str(row[columns["edit_prompt"]]).strip(), str(b), where))
    return read


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise MediaProblem("missing image", f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaProblem("unreadable image", f"cannot read image {path}: {exc}") from None
