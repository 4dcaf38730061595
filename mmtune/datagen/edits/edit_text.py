"""Edit text: an LLM turns an input caption into (edit instruction, edited caption), and filters keep what is usable.

The paper fine-tuned GPT-3 on 700 human-written (caption, instruction, edited
caption) triples and sampled it on LAION captions. Here the model answers a chat
prompt, and the shipped examples (``datasets/edit-text-examples.jsonl``) are
alpaca rows of that very prompt and answer, so ``configs/edit_text_smollm2.yaml``
tunes a model on exactly what generation asks it (a test checks that the
card's conversations equal :func:`edit_text_prompt` / :func:`format_edit_text`).

An answer is two labelled lines::

    Edit: make it winter
    Edited caption: a red barn in a snowy field

Anything else (a missing label, an empty field, extra lines) is malformed; an
edited caption equal to the input caption (case, spacing and final punctuation
aside, as the paper's generator compares them) changes nothing and is dropped;
an answer cut off by the token limit is unfinished. Each drop is counted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mmtune.datagen.filters import normalize
from mmtune.datagen.sampler import Completion
from mmtune.errors import DataError

EDIT_TEXT_INSTRUCTION = (
    "Write an instruction that edits the picture this caption describes, then the caption of the edited picture."
)
EDIT_LABEL = "Edit:"
CAPTION_LABEL = "Edited caption:"

_LINE = re.compile(r"^\s*(?P<label>edit|edited caption)\s*:\s*(?P<value>.*?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class CaptionRow:
    """One input caption, by its position in the captions file; ``edit`` / ``output`` when the file gives them."""

    index: int
    caption: str
    edit: str | None = None
    output: str | None = None
    where: str = ""

    @property
    def given(self) -> bool:
        return self.edit is not None and self.output is not None


@dataclass(frozen=True)
class EditText:
    index: int
    input: str
    edit: str
    output: str
    source: str
    """``llm`` (generated) or ``given`` (from the captions file)."""

    def as_row(self) -> dict:
        return {"index": self.index, "input": self.input, "edit": self.edit, "output": self.output,
                "source": self.source}


def edit_text_prompt(caption: str) -> str:
    """The user message for one caption: alpaca's rendering of (instruction, input), as the examples train it."""
    return f"{EDIT_TEXT_INSTRUCTION}\n\n{caption.strip()}"


def format_edit_text(edit: str, output: str) -> str:
    """The answer the model is tuned to write."""
    return f"{EDIT_LABEL} {edit.strip()}\n{CAPTION_LABEL} {output.strip()}"


def parse_edit_text(text: str) -> tuple[str, str] | None:
    """(edit, edited caption) from an answer, or None when it is not exactly the two labelled, non-empty lines."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 2:
        return None
    found = [_LINE.match(line) for line in lines]
    if not all(found):
        return None
    (edit_label, edit), (caption_label, caption) = ((m["label"].lower(), m["value"]) for m in found)
    if (edit_label, caption_label) != ("edit", "edited caption") or not edit or not caption:
        return None
    return edit, caption


def edit_rejection(caption: str, edit: str, output: str) -> str | None:
    """The content filter, for generated and given edits alike."""
    if not edit.strip() or not output.strip():
        return "empty edit or caption"
    if normalize(output) == normalize(caption):
        return "unchanged caption"
    return None


def judge_completion(row: CaptionRow, completion: Completion) -> tuple[EditText | None, str | None]:
    """The edit text in one LLM answer, or the reason it is dropped."""
    if completion.truncated:
        return None, "unfinished (length)"
    parsed = parse_edit_text(completion.text)
    if parsed is None:
        return None, "malformed"
    reason = edit_rejection(row.caption, *parsed)
    return (None, reason) if reason else (EditText(row.index, row.caption, *parsed, source="llm"), None)


def read_captions(path: Path) -> list[CaptionRow]:
    """Captions to edit: ``.jsonl`` rows with ``caption`` (or ``input``, the paper's name) and, optionally, both
    ``edit`` and ``output`` (then no LLM is asked); any other file, one caption per line. Blank lines are skipped;
    a bad row is one line naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: captions file not found", reason="missing file")
    if path.suffix.lower() == ".json":
        raise DataError(f"{path}: give captions as JSONL (.jsonl, one object per line) or one caption per line",
                        reason="wrong format")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})", reason="unreadable file") from None
    rows: list[CaptionRow] = []
    jsonl = path.suffix.lower() == ".jsonl"
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        if not jsonl:
            rows.append(CaptionRow(len(rows), line.strip(), where=where))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg})", reason="malformed JSON") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: a row must be a JSON object", reason="wrong field type")
        key = "caption" if "caption" in obj else "input"
        caption = obj.get(key)
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"{where}: field '{key}' must be a non-empty string (the input caption)",
                            reason="missing field")
        edit, output = obj.get("edit"), obj.get("output")
        if edit is not None and not isinstance(edit, str):
            raise DataError(f"{where}: field 'edit' must be a string", reason="wrong field type")
        if output is not None and not isinstance(output, str):
            raise DataError(f"{where}: field 'output' must be a string", reason="wrong field type")
        both = edit is not None and output is not None
        rows.append(CaptionRow(len(rows), caption.strip(), edit.strip() if both else None,
                               output.strip() if both else None, where))
    if not rows:
        raise DataError(f"{path}: no captions", reason="empty input")
    return rows
