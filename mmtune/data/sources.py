"""Where rows come from: dataset cards, local JSON / JSONL / Parquet files, hub datasets.

Local files are read here (not through ``datasets``) so that every row keeps
its location: a malformed line is reported as ``file:line``; rows of JSON
arrays, Parquet files and hub datasets are numbered from 1 as well. Hub datasets go
through ``datasets.load_dataset`` and are addressed by row index.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mmtune.config.schema import DatasetSpec, PromptErasure
from mmtune.data.formats import FORMAT_DEFAULTS
from mmtune.errors import ConfigError, DataError

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet")
CARD_KEYS = {"description", "license", "path", "hub", "split", "format", "columns", "roles", "oasst_best_path_only",
             "citation", "image_folder", "prompt_erasure"}


@dataclass
class ResolvedSource:
    """A dataset entry with its card applied: everything needed to read and convert it."""

    name: str
    format: str
    path: Path | None = None
    hub: str | None = None
    split: str = "train"
    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0
    max_samples: int | None = None
    oasst_best_path_only: bool = False
    image_folder: Path | None = None
    """Where relative image paths point (``llava``); default: the data file's folder."""
    prompt_erasure: PromptErasure | None = None

    def images_root(self) -> Path:
        if self.image_folder is not None:
            return self.image_folder
        if self.path is not None:
            return self.path.parent
        raise ConfigError(f"dataset '{self.name}': a hub dataset with images needs 'image_folder'")

    def fingerprint(self) -> str:
        """Content hash of the data (file bytes, or hub name + split)."""
        h = hashlib.blake2b(digest_size=16)
        if self.path is not None:
            with open(self.path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"hub:{self.hub}:{self.split}".encode())
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


def resolve_source(spec: DatasetSpec) -> ResolvedSource:
    """Apply a card (if any) under the recipe entry's own settings."""
    if spec.card is None:
        path = Path(spec.path).expanduser() if spec.path else None
        return ResolvedSource(
            name=str(spec.path or spec.hub), format=spec.format or "", path=path, hub=spec.hub,
            split=spec.split, columns=dict(spec.columns), roles=dict(spec.roles), weight=spec.weight,
            max_samples=spec.max_samples, oasst_best_path_only=spec.oasst_best_path_only,
            image_folder=Path(spec.image_folder).expanduser() if spec.image_folder else None,
            prompt_erasure=spec.prompt_erasure,
        )
    card_path = find_card(spec.card)
    try:
        card = yaml.safe_load(card_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{card_path}: not valid YAML: {exc}") from None
    unknown = set(card) - CARD_KEYS
    if unknown:
        raise ConfigError(f"{card_path}: unknown card key(s) {sorted(unknown)}; valid: {sorted(CARD_KEYS)}")
    if "format" not in card or ("path" in card) == ("hub" in card):
        raise ConfigError(f"{card_path}: a card needs 'format' and exactly one of 'path' or 'hub'")
    if card["format"] not in FORMAT_DEFAULTS:
        raise ConfigError(f"{card_path}: format: unknown format '{card['format']}' (valid: {', '.join(FORMAT_DEFAULTS)})")
    for key in ("columns", "roles"):
        if not isinstance(card.get(key) or {}, dict):
            raise ConfigError(f"{card_path}: {key}: expected a mapping of names")
    path = (card_path.parent / card["path"]).resolve() if "path" in card else None
    if spec.image_folder:
        image_folder = Path(spec.image_folder).expanduser()
    elif card.get("image_folder"):
        image_folder = (card_path.parent / card["image_folder"]).resolve()
    else:
        image_folder = None
    return ResolvedSource(
        name=card_path.stem,
        format=spec.format or card["format"],
        path=path,
        hub=card.get("hub"),
        split=spec.split if "split" in spec.model_fields_set else card.get("split", spec.split),
        columns={**(card.get("columns") or {}), **spec.columns},
        roles={**(card.get("roles") or {}), **spec.roles},
        weight=spec.weight,
        max_samples=spec.max_samples,
        oasst_best_path_only=spec.oasst_best_path_only or bool(card.get("oasst_best_path_only", False)),
        image_folder=image_folder,
        prompt_erasure=spec.prompt_erasure if "prompt_erasure" in spec.model_fields_set else _card_erasure(card, card_path),
    )


def _card_erasure(card: dict, card_path: Path) -> PromptErasure | None:
    if card.get("prompt_erasure") is None:
        return None
    try:
        return PromptErasure.model_validate(card["prompt_erasure"])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("prompt_erasure", *first["loc"]))
        raise ConfigError(f"{card_path}: {where}: {first['msg']}") from None


class MalformedRow(Exception):
    """A row that is not valid JSON; carries its location for the skip report."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(detail)
        self.where = where
        self.detail = detail


def iter_rows(src: ResolvedSource) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    """Yield ``(location, row)``; a malformed row is yielded as a :class:`MalformedRow`."""
    if src.hub is not None:
        yield from _iter_hub(src)
        return
    path = src.path
    assert path is not None
    if not path.is_file():
        raise DataError(f"{path}: data file not found (dataset '{src.name}')", reason="missing file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
    elif suffix == ".json":
        yield from _iter_json(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (use {', '.join(SUPPORTED_SUFFIXES)})")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, MalformedRow(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                yield where, MalformedRow(where, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield where, row


def _iter_json(path: Path) -> Iterator[tuple[str, dict[str, Any] | MalformedRow]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})", reason="malformed JSON") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style wrappers
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}", reason="malformed JSON")
    for i, row in enumerate(data, start=1):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            yield where, MalformedRow(where, f"expected a JSON object, got {type(row).__name__}")
        else:
            yield where, row


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
        ds = datasets.load_dataset(src.hub, split=src.split)
    except Exception as exc:  # hub errors come in many types; all mean "could not load"
        raise DataError(f"hub dataset '{src.hub}' (split {src.split}) could not be loaded: {exc}", reason="missing file") from None
    for i, row in enumerate(ds, start=1):
        yield f"{src.hub}[{src.split}]: row {i}", row
