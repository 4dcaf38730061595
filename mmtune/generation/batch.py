"""``mmtune generate``: replies for a file of prompts (or one prompt), written as JSONL.

A prompt file is plain text (one prompt per non-empty line) or JSONL whose rows
carry ``prompt`` (a string), ``messages`` (a list of ``{role, content}``,
ending with the user turn to answer) or ``instruction`` (+ optional ``input``,
Alpaca style). For a multimodal model a JSONL row may add, per modality, a
list of paths relative to the prompt file under the modality's name plus
``s`` (``images``, ``videos``, ``audios``: :func:`media_field`), placed at its
first user turn. They are header-checked as the file is read, so a bad path
is one line naming file, row and field before any model loads. Each output
row is ``{"prompt": ..., "output": ...}`` (plus the row's ``id`` when it has
one), in input order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.data.formats import BadRow, Conversation
from mmtune.data.media import attach_media, checked_path
from mmtune.errors import DataError
from mmtune.generation.options import BATCH_SIZE, GenerationOptions
from mmtune.modalities import MODALITIES


@dataclass
class PromptItem:
    prompt: str | list
    """As given in the file (kept verbatim in the output row)."""
    conversation: Conversation
    id: Any = None
    where: str = ""
    """``file:line``, named by errors about the prompt (default: its place in the list)."""


def media_field(modality: str) -> str:
    """The prompt-file field listing a modality's files: ``images``, ``videos``, ``audios``."""
    return f"{modality}s"


def _conversation_of(row: dict, where: str, system: str | None) -> tuple[Any, Conversation]:
    head: Conversation = [{"role": "system", "content": system}] if system else []
    if isinstance(row.get("prompt"), str):
        return row["prompt"], [*head, {"role": "user", "content": row["prompt"]}]
    if isinstance(row.get("messages"), list):
        msgs = row["messages"]
        for k, m in enumerate(msgs):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: field 'messages[{k}]': expected {{'role': str, 'content': str}}",
                                reason="bad field")
        if not msgs or msgs[-1]["role"] != "user":
            raise DataError(f"{where}: field 'messages': must end with a user message to answer", reason="bad field")
        return msgs, [*head, *({"role": m["role"], "content": m["content"]} for m in msgs)]
    if isinstance(row.get("instruction"), str):
        text = row["instruction"] + (f"\n\n{row['input']}" if isinstance(row.get("input"), str) and row["input"] else "")
        return text, [*head, {"role": "user", "content": text}]
    raise DataError(f"{where}: no prompt: expected a string field 'prompt' or 'instruction', or a list 'messages'",
                    reason="missing field")


def read_prompts(path: Path, *, system: str | None = None) -> list[PromptItem]:
    """Prompts of a ``.jsonl`` file (rows as above) or any other text file (one prompt per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found", reason="missing file")
    items: list[PromptItem] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if path.suffix.lower() != ".jsonl":
            items.append(PromptItem(line.strip(), [*([{"role": "system", "content": system}] if system else []),
                                                   {"role": "user", "content": line.strip()}]))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})", reason="malformed JSON") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}", reason="malformed JSON")
        prompt, conv = _conversation_of(row, where, system)
        conv = attach_media(conv, _media_of(row, path.parent, where))
        items.append(PromptItem(prompt, conv, row.get("id"), where))
    if not items:
        raise DataError(f"{path}: no prompt in the file", reason="empty dataset")
    return items


def _media_of(row: dict, folder: Path, where: str) -> list[tuple[str, str]]:
    """The row's ``(modality, path)`` items, field by field in registry order, each file header-checked."""
    media = []
    for name in MODALITIES:
        field = media_field(name)
        refs = row.get(field) or []
        if not (isinstance(refs, list) and all(isinstance(p, str) for p in refs)):
            raise DataError(f"{where}: field '{field}': expected a list of paths", reason="bad field")
        for ref in refs:
            try:
                found, _ = checked_path({"modality": name, "ref": str(folder / ref), "field": field}, None)
            except BadRow as exc:
                raise DataError(f"{where}: field '{field}': {exc.detail}", reason=exc.reason) from None
            media.append((name, str(found)))
    return media


def generate_to_jsonl(model_or_source, tokenizer, items: Sequence[PromptItem], opts: GenerationOptions,
                      out_path: Path | None, *, batch_size: int = BATCH_SIZE, progress: bool = True) -> list[dict]:
    """Generate replies for ``items``; rows go to ``out_path`` (written whole at the end) and are returned."""
    from mmtune.generation.decoding import generate_texts
    from mmtune.utils.atomic import atomic_write_text

    outputs = generate_texts(model_or_source, tokenizer, [it.conversation for it in items], opts,
                             batch_size=batch_size, progress=progress,
                             wheres=[it.where or f"prompt {i + 1}" for i, it in enumerate(items)])
    rows = []
    for it, out in zip(items, outputs):
        row = {"id": it.id} if it.id is not None else {}
        rows.append({**row, "prompt": it.prompt, "output": out})
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows
