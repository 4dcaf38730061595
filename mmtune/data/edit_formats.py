"""Readers of editing-triplet layouts: rows -> :class:`~mmtune.data.edit_triplets.Triplet`, with bad input counted.

``edit_triplets``: diffusers' layout (``train_instruct_pix2pix.py``), one row per triplet with
``input_image``, ``edit_prompt`` and ``edited_image`` columns (renamed by a card's ``columns``), in a
JSONL / JSON / CSV / Parquet file, or a folder (an image folder with its ``metadata.jsonl``, ``.csv`` or
``.parquet``; else every ``*.parquet`` shard in it, as a hub dataset is downloaded). An image cell is a
path relative to the data file's folder (or ``media_folder``), or, as Hugging Face writes Parquet, an image
struct ``{"bytes": ..., "path": ...}`` (a decoded PIL image from a hub dataset likewise): embedded bytes are
written once to a content-addressed cache (:func:`embedded_image_root`), so workers decode files as usual.

``ip2p_folders``: the original instruct-pix2pix repository's layout. The dataset root (the card's ``path``,
or its ``seeds.json``) holds ``seeds.json``, a JSON list of ``[folder name, [seed, ...]]``, and one folder
per sample with ``prompt.json`` (``{"input": caption, "edit": instruction, "output": caption}``) and a
``{seed}_0.jpg`` (before) / ``{seed}_1.jpg`` (after) pair per seed. A sample is one triplet carrying all its
seed pairs: training draws one per read, as the original does (``Triplet.more_pairs``). The instruction is
``prompt.json``'s ``edit`` (``columns: {edit_prompt: output}`` reads another key).

Every image is confined to its media folder (a sample's folder) and its header is checked here; the bodies
are decoded later, in DataLoader workers. A bad triplet (or seed pair) is one line naming file, row and
field (``on_bad_sample: error``) or a counted skip; a file that holds the whole dataset (``seeds.json``, a
Parquet file) and cannot be read is always an error. A pair of different sizes is kept (the collate resizes
the edited image to the input's) and counted in the report line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.data.edit_triplets import Triplet
from mmtune.data.sources import MalformedRow, ResolvedSource, iter_rows
from mmtune.errors import DataError
from mmtune.modalities.base import MediaProblem
from mmtune.modalities.image import IMAGE, check_image

log = logging.getLogger("mmtune")

TRIPLET_FIELDS = ("input_image", "edit_prompt", "edited_image")
IMAGE_FIELDS = ("input_image", "edited_image")
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
"""What an image folder's rows are called (Hugging Face's ``imagefolder`` convention), in the order looked for."""
SEEDS_FILE = "seeds.json"
PROMPT_FILE = "prompt.json"
IP2P_EDIT_KEY = "edit"
"""The key of ``prompt.json`` trained on, as the original ``EditDataset`` reads it."""

Bad = Callable[[str, str, str], None]


@dataclass
class TripletRead:
    name: str
    triplets: list[Triplet] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    """Reason -> triplets (for ``ip2p_folders`` image problems: seed pairs) skipped for it."""
    resized: int = 0
    """Pairs whose two images differ in size: the edited image is resized to the input's."""

    def report_line(self, used: int) -> str:
        kept = self.triplets[:used]
        pairs = sum(1 + len(t.more_pairs) for t in kept)
        parts = [f"{self.name}: {used} triplet(s)" + (f" ({pairs} image pairs: one drawn per read)"
                                                      if pairs != used else "")]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} ({reason})" for reason, n in self.skipped.items()))
        if self.resized:
            parts.append(f"{self.resized} pair(s) of different sizes (the edited image is resized to the input's)")
        return "; ".join(parts)


def read_triplets(source: ResolvedSource, *, on_bad_sample: str) -> TripletRead:
    """Every usable triplet of ``source``, with what was skipped and resized (``on_bad_sample``: error | skip)."""
    readers = {"edit_triplets": _read_diffusers, "ip2p_folders": _read_ip2p}
    if source.format not in readers:
        raise DataError(f"dataset '{source.name}': format '{source.format}' is not a triplet format for the edit "
                        "task (use edit_triplets or ip2p_folders)", reason="wrong format")
    read = TripletRead(source.name)

    def bad(where: str, reason: str, detail: str) -> None:
        if on_bad_sample == "error":
            raise DataError(f"{where}: {detail}", reason=reason)
        read.skipped[reason] += 1
        log.warning("skipped %s: %s", where, detail)

    readers[source.format](source, read, bad)
    return read


# --------------------------------------------------------------------------- diffusers' layout


def _read_diffusers(source: ResolvedSource, read: TripletRead, bad: Bad) -> None:
    columns = {f: source.settings.columns.get(f, f) for f in TRIPLET_FIELDS}
    for part in _data_files(source):
        for where, row in iter_rows(part):
            if isinstance(row, MalformedRow):
                bad(row.where, row.reason, row.detail)
                continue
            missing = [columns[f] for f in TRIPLET_FIELDS if _absent(row.get(columns[f]))]
            if columns["edit_prompt"] in missing or not isinstance(row.get(columns["edit_prompt"]), str):
                text = "the edit prompt is empty" if columns["edit_prompt"] in missing else \
                    f"the edit prompt is not text (got {type(row[columns['edit_prompt']]).__name__})"
                bad(f"{where}, field '{columns['edit_prompt']}'", "empty edit prompt", text)
                continue
            if missing:
                bad(f"{where}, field '{missing[0]}'", "missing field", "no value")
                continue
            try:
                pair = [_cell_image(row[columns[f]], part, f"field '{columns[f]}'") for f in IMAGE_FIELDS]
            except MediaProblem as problem:
                bad(where, problem.reason, problem.detail)
                continue
            _add(read, pair, row[columns["edit_prompt"]], where)


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _data_files(source: ResolvedSource) -> Iterator[ResolvedSource]:
    """The source itself, or for a folder its ``metadata`` file (else its Parquet shards), each as a source."""
    path = source.path
    if path is None or not path.is_dir():
        yield source
        return
    found = [path / name for name in METADATA_FILES if (path / name).is_file()]
    files = found[:1] or sorted(path.glob("*.parquet"))
    if not files:
        raise DataError(f"{path}: a folder of triplets needs a {' / '.join(METADATA_FILES)} file or *.parquet "
                        f"shards (dataset '{source.name}', format edit_triplets)", reason="missing file")
    for file in files:
        yield dataclasses.replace(source, settings=source.settings.model_copy(update={"path": str(file)}))


def _image_path(value: Any, part: ResolvedSource) -> tuple[Path, str]:
    """A cell -> (the file to read, what it is when not a path of the row: ``embedded bytes of x.png``).
    Embedded bytes and decoded PIL images are written to the cache first."""
    from PIL import Image

    if isinstance(value, str):
        return IMAGE.resolve(part.media_root(), value), ""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        data, ref = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return embedded_image(bytes(data)), f"embedded bytes{f' of {ref}' if ref else ''}"
        if isinstance(ref, str) and ref.strip():
            return IMAGE.resolve(part.media_root(), ref), ""
        raise MediaProblem("malformed image field", "an image struct {bytes, path} with neither bytes nor a path")
    if isinstance(value, Image.Image):  # a hub dataset's Image feature, decoded by `datasets`
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return embedded_image(buffer.getvalue()), "a decoded image"
    raise MediaProblem("malformed image field", f"expected a path or an image struct {{bytes, path}}, got "
                                                f"{type(value).__name__}")


def embedded_image_root() -> Path:
    """``$MMTUNE_CACHE/edit_images`` (default ``~/.cache/mmtune/edit_images``): images that came as bytes."""
    from mmtune.models.aliases import cache_root

    return cache_root() / "edit_images"


def embedded_image(data: bytes) -> Path:
    """The cached file of an image given as bytes, written once.

    Content-addressed (named by the bytes' hash): rereading a Parquet file writes nothing, an input image
    shared by many rows is one file, and concurrent readers (several ranks) at worst write the same bytes
    twice through an atomic rename. Files carry no suffix: images are opened by their content.
    """
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    target = embedded_image_root() / digest[:2] / digest
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{digest}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def _cell_image(value: Any, part: ResolvedSource, label: str) -> tuple[Path, tuple[int, int]]:
    try:
        path, what = _image_path(value, part)
    except MediaProblem as problem:
        raise MediaProblem(problem.reason, f"{label}: {problem.detail}") from None
    return _checked(path, what, label)


def _checked(path: Path, what: str, label: str) -> tuple[Path, tuple[int, int]]:
    """``(path, size)`` after a header check; a problem's line starts with ``label`` (the field or file)."""
    try:
        return path, check_image(path)
    except MediaProblem as problem:
        raise MediaProblem(problem.reason, f"{label}: {problem.detail}{f' ({what})' if what else ''}") from None


def _add(read: TripletRead, pairs: list, prompt: str, origin: str) -> None:
    """One triplet from ``[(input, size), (edited, size), ...]`` (flat: input, edited, input, edited...)."""
    pairs = [(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    read.resized += sum(size_a != size_b for (_, size_a), (_, size_b) in pairs)
    (a, _), (b, _) = pairs[0]
    more = tuple((str(x), str(y)) for (x, _), (y, _) in pairs[1:])
    read.triplets.append(Triplet(str(a), prompt.strip(), str(b), origin, more))


# --------------------------------------------------------------------------- the original repository's layout


def _read_ip2p(source: ResolvedSource, read: TripletRead, bad: Bad) -> None:
    path = source.path
    if path is None:
        raise DataError(f"dataset '{source.name}': format ip2p_folders reads a local folder; give 'path' (the "
                        "dataset root with seeds.json)", reason="missing file")
    root = path.parent if path.name == SEEDS_FILE and path.is_file() else path
    seeds_file = root / SEEDS_FILE
    if not seeds_file.is_file():
        origin = f"dataset card '{source.name}' at {source.card}" if source.card else f"dataset '{source.name}'"
        raise DataError(f"{seeds_file}: not found ({origin}; format ip2p_folders needs the dataset root folder "
                        "of instruct-pix2pix's layout: seeds.json and one folder per sample)", reason="missing file")
    entries = _json_file(seeds_file)
    if not isinstance(entries, list):
        raise DataError(f"{seeds_file}: expected a JSON list of [folder name, [seed, ...]], got "
                        f"{type(entries).__name__}", reason="malformed seeds.json")
    folders = Path(source.settings.media_folder) if source.settings.media_folder else root
    key = source.settings.columns.get("edit_prompt", IP2P_EDIT_KEY)
    for i, entry in enumerate(entries, start=1):
        where = f"{seeds_file}: entry {i}"
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and entry[0]
                and isinstance(entry[1], list) and entry[1]):
            bad(where, "malformed seeds.json entry", "expected [folder name, [seed, ...]] with at least one seed, "
                                                     f"got {json.dumps(entry)[:80]}")
            continue
        name, seeds = entry
        try:
            folder = IMAGE.resolve(folders, name)
        except MediaProblem as problem:
            bad(where, "sample folder escapes the dataset folder", problem.detail.replace("image path", "folder"))
            continue
        try:
            prompt = _edit_prompt(folder / PROMPT_FILE, key)
        except DataError as problem:
            bad(f"{where} ('{name}'): {folder / PROMPT_FILE}", problem.reason, str(problem))
            continue
        pairs: list = []
        for seed in seeds:
            if isinstance(seed, bool) or not isinstance(seed, (str, int)) or str(seed).strip() == "":
                bad(where, "malformed seeds.json entry", f"seed {json.dumps(seed)} is not a number or a name")
                continue
            try:
                pair = [_checked(_confined(folder, f"{seed}_{k}.jpg"), "", f"file '{seed}_{k}.jpg'") for k in (0, 1)]
            except MediaProblem as problem:
                bad(f"{where} ('{name}'), seed {seed}", problem.reason, problem.detail)
                continue
            pairs.extend(pair)
        if pairs:
            _add(read, pairs, prompt, f"{folder} ({where})")


def _confined(folder: Path, name: str) -> Path:
    try:
        return IMAGE.resolve(folder, name)
    except MediaProblem as problem:
        raise MediaProblem(problem.reason, f"file '{name}': {problem.detail}") from None


def _json_file(path: Path) -> Any:
    """A whole-dataset JSON file; unreadable, it stops the run (no sample of it can be read)."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start + 1})", reason="invalid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})",
                        reason="malformed JSON") from None


def _edit_prompt(path: Path, key: str) -> str:
    """The instruction of a sample's ``prompt.json``; every problem is a :class:`DataError` (its reason: the skip's)."""
    if not path.is_file():
        raise DataError("not found", reason="missing prompt.json")
    try:
        prompt = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"malformed prompt.json ({exc})", reason="malformed prompt.json") from None
    if not isinstance(prompt, dict):
        raise DataError(f"malformed prompt.json (expected an object with input, edit, output; got "
                        f"{type(prompt).__name__})", reason="malformed prompt.json")
    value = prompt.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field '{key}': the edit prompt is " + ("empty" if value in (None, "") or isinstance(
            value, str) else f"not text (got {type(value).__name__})"), reason="empty edit prompt")
    return value
