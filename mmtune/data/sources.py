"""Where rows come from: dataset cards, local JSON / JSONL / CSV / Parquet files, hub datasets.

Local files are read here (not through ``datasets``) so that every row keeps
its location: a malformed line is reported as ``file:line``; rows of JSON
arrays, Parquet files and hub datasets are numbered from 1 as well. Hub datasets go
through ``datasets.load_dataset`` and are addressed by row index.

A JSON file may hold its rows as a list, as the one list inside an object
(``{"info": ..., "questions": [...]}``, as VQAv2, TextVQA and TextCaps ship),
or as an object of row objects keyed by id (GQA's question files), so real
layouts need no conversion script. A CSV file (WebVid, AudioCaps, Clotho ship
their annotations so) has a header row; its rows are located as ``file:line``
and an empty cell reads as absent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.config.loader import load_card
from mmtune.config.schema import DatasetSpec, DataSource
from mmtune.data.formats import caption_media
from mmtune.data.instruction_templates import (
    INSTRUCTION_FORMATS,
    check_templates,
    default_template_set,
    load_template_set,
)
from mmtune.errors import ConfigError, DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
_SOURCE_KEYS = set(DataSource.model_fields)


@dataclass
class ResolvedSource:
    """A dataset entry with its card applied: everything needed to read and convert it.

    ``settings`` holds the schema's :class:`DataSource` keys with paths made
    absolute, so code reads ``src.settings.format`` and the tokenized-cache
    key is derived from it instead of listing the keys again.
    """

    name: str
    settings: DataSource
    weight: float = 1.0
    max_samples: int | None = None
    card: Path | None = None
    """The card file the dataset came from (None: given inline)."""

    @property
    def path(self) -> Path | None:
        return Path(self.settings.path) if self.settings.path else None

    @property
    def format(self) -> str:
        return self.settings.format or ""

    def media_root(self) -> Path:
        """Where relative media paths point: ``media_folder``, else the data file's folder."""
        if self.settings.media_folder is not None:
            return Path(self.settings.media_folder)
        if self.path is not None:
            return self.path.parent
        raise ConfigError(f"dataset '{self.name}': a hub dataset with media needs 'media_folder'")

    def missing_file(self) -> DataError:
        """The one line for a data file that is not there, naming the card that points at it."""
        origin = f"dataset card '{self.name}' at {self.card}; its 'path' is relative to the card" if self.card \
            else f"dataset '{self.name}'"
        return DataError(f"{self.path}: data file not found ({origin})", reason="missing file")

    def fingerprint(self) -> str:
        """Content hash of the data (file bytes, or hub name + split)."""
        h = hashlib.blake2b(digest_size=16)
        if self.path is not None:
            with open(self.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"hub:{self.settings.hub}:{self.settings.split}".encode())
        return h.hexdigest()


def card_search_dirs() -> list[Path]:
    """``./datasets`` first, then the ``datasets/`` folder of the mmtune checkout."""
    repo_datasets = Path(__file__).resolve().parents[2] / "datasets"
    dirs = [Path.cwd() / "datasets", repo_datasets]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_card(name: str) -> Path:
    as_path = Path(name).expanduser()
    if as_path.suffix in (".yaml", ".yml"):
        if as_path.is_file():
            return as_path
        raise ConfigError(f"data.datasets: card file '{name}' not found")
    tried = []
    for d in card_search_dirs():
        for candidate in (d / f"{name}.yaml", d / f"{name}.yml"):
            tried.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise ConfigError(f"data.datasets: no dataset card named '{name}' (looked for {', '.join(tried)})")


def find_template_set(ref: str, base: Path) -> Path:
    """A template set by file path (relative to ``base``) or by name in ``templates/`` of the card folders."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(_absolute(ref, base))
        if path.is_file():
            return path
        raise ConfigError(f"templates: template set file '{path}' not found")
    tried = [d / "templates" / f"{ref}.yaml" for d in card_search_dirs()]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"templates: no template set named '{ref}' (looked for {', '.join(map(str, tried))})")


def resolve_templates(value: str | list[str] | None, fmt: str, base: Path, dataset: str,
                      columns: dict[str, str] | None = None) -> list[str] | None:
    """A task format's templates as a list (named set, file or list; default: the format's set, for
    ``caption_pair`` the set of the modality its ``columns`` name); None for other formats, which take none."""
    if fmt not in INSTRUCTION_FORMATS:
        if value is not None:
            raise ConfigError(f"dataset '{dataset}': 'templates' applies to the formats "
                              f"{', '.join(INSTRUCTION_FORMATS)}, not '{fmt}'")
        return None
    if isinstance(value, list):
        return check_templates(value, fmt, f"dataset '{dataset}': templates")
    modality = None
    if value is None and fmt == "caption_pair" and columns is not None:
        try:
            modality = caption_media(columns)
        except ValueError as exc:
            raise ConfigError(f"dataset '{dataset}': {exc}") from None
    return load_template_set(find_template_set(value or default_template_set(fmt, modality), base), fmt)


def _absolute(path: str | None, base: Path) -> str | None:
    """``path`` relative to ``base``, made absolute (``..`` folded, symlinks kept as written)."""
    return None if path is None else os.path.abspath(base / Path(path).expanduser())


def resolve_source(spec: DatasetSpec) -> ResolvedSource:
    """Apply a card (if any) under the entry's own settings: keys set on the entry win, columns and roles merge."""
    # Keys the entry sets win over the card's; an explicit null only switches prompt erasure off.
    own = {k: getattr(spec, k) for k in spec.model_fields_set & _SOURCE_KEYS
           if getattr(spec, k) is not None or k == "prompt_erasure"}
    if spec.card is None:
        settings = spec.model_dump(include=_SOURCE_KEYS)
        settings["path"] = _absolute(spec.path, Path.cwd())
        settings["media_folder"] = _absolute(spec.media_folder, Path.cwd())
        name = str(spec.path or spec.hub)
        settings["templates"] = resolve_templates(spec.templates, settings["format"], Path.cwd(), name,
                                                  settings["columns"])
        return ResolvedSource(name, DataSource(**settings), spec.weight, spec.max_samples)
    card_path = find_card(spec.card)
    card = load_card(card_path)
    settings = card.model_dump(include=_SOURCE_KEYS)
    settings["path"] = _absolute(card.path, card_path.parent)
    settings["media_folder"] = _absolute(card.media_folder, card_path.parent)
    if "media_folder" in own:
        own["media_folder"] = _absolute(spec.media_folder, Path.cwd())
    settings.update(own)
    settings["columns"] = {**card.columns, **spec.columns}
    settings["roles"] = {**card.roles, **spec.roles}
    settings["templates"] = resolve_templates(settings["templates"], settings["format"],
                                              Path.cwd() if "templates" in own else card_path.parent, card_path.stem,
                                              settings["columns"])
    return ResolvedSource(card_path.stem, DataSource(**settings), spec.weight, spec.max_samples, card_path)


class MalformedRow(Exception):
    """A row that cannot be read (not UTF-8, not JSON); carries its location and reason for the skip report."""

    def __init__(self, where: str, detail: str, reason: str = "malformed JSON") -> None:
        super().__init__(detail)
        self.where = where
        self.detail = detail
        self.reason = reason


def iter_rows(src: ResolvedSource) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    """Yield ``(location, row)``; a malformed row is yielded as a :class:`MalformedRow`."""
    if src.settings.hub is not None:
        yield from _iter_hub(src)
        return
    path = src.path
    assert path is not None
    if not path.is_file():
        raise src.missing_file()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".csv":
        yield from _iter_csv(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (use {', '.join(SUPPORTED_SUFFIXES)})")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, MalformedRow(where, f"not valid UTF-8 (byte {exc.start + 1} of the line)",
                                          reason="invalid UTF-8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, MalformedRow(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield where, MalformedRow(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _read_utf8(path: Path, kind: str, encoding: str = "utf-8") -> str:
    """The file's text; bytes that are not UTF-8 are one line naming the file's line and byte."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start + 1} of the file); a {kind} file must be "
                        "UTF-8", reason="invalid UTF-8") from None


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    text = _read_utf8(path, "JSON")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})", reason="malformed JSON") from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) == 1:  # {"info": ..., "data": [...]} style wrappers
            data = data[lists[0]]
        elif data and not lists and all(isinstance(v, dict) for v in data.values()):  # rows keyed by id
            for key, row in data.items():
                yield f"{path}: key '{key}'", row
            return
        else:
            found = f"lists under {lists}" if lists else "no list and not only objects"
            raise DataError(f"{path}: expected a JSON list of objects, or an object holding one such list or "
                            f"objects keyed by id; got an object with {found}", reason="malformed JSON")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}", reason="malformed JSON")
    for i, row in enumerate(data, start=1):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            yield where, MalformedRow(where, f"expected a JSON object, got {type(row).__name__}")
        else:
            yield where, row


def _iter_csv(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    """Rows of a CSV file with a header row, located as ``file:line`` (the line a row starts on); an empty
    cell is absent (None), a row with more cells than the header is malformed."""
    text = _read_utf8(path, "CSV", encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=_EXTRA_CELLS)
    try:
        header = reader.fieldnames
        if not header:
            return
        line = reader.line_num
        for row in reader:
            where = f"{path}:{line + 1}"
            line = reader.line_num
            if _EXTRA_CELLS in row:
                yield where, MalformedRow(where, f"{len(header) + len(row[_EXTRA_CELLS])} cells but the header "
                                                 f"names {len(header)} columns", reason="malformed CSV")
                continue
            yield where, {k: (None if v is None or v == "" else v) for k, v in row.items()}
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})", reason="malformed CSV") from None


_EXTRA_CELLS = "\0extra cells"


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read Parquet file: {exc}", reason="malformed file") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {i}", row


def _iter_hub(src: ResolvedSource) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    import datasets

    try:
        ds = datasets.load_dataset(src.settings.hub, split=src.settings.split)
    except Exception as exc:  # hub errors come in many types; all mean "could not load"
        raise DataError(f"hub dataset '{src.settings.hub}' (split {src.settings.split}) could not be loaded: {exc}",
                        reason="missing file") from None
    for i, row in enumerate(ds, start=1):
        yield f"{src.settings.hub}[{src.settings.split}]: row {i}", row
