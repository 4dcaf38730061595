"""InstructBLIP's task formats: ``vqa``, ``caption`` and ``caption_pair`` rows -> instruction conversations.

A row gives an image and a question with the annotators' answers (``vqa``:
VQAv2, OK-VQA, A-OKVQA, GQA, OCR-VQA, TextVQA-style files), an image with
one or several captions (``caption``: COCO Caption, TextCaps), or an image,
video or audio file with its caption(s) (``caption_pair``: stage-1 alignment
pairs such as WebVid, AudioCaps, Clotho; the media column is the one the
card names, with an optional clip window). Each sample's
user turn is the image followed by a template drawn from the dataset's
template set (``instruction_templates.py``); the assistant turn is the answer
or caption trained on, carrying every reference for evaluation. The draws
depend on the dataset's seed and the row's index only, so they are
reproducible and independent of how the data is split among workers.

Column names come from the card's ``columns`` (defaults: ``FORMAT_DEFAULTS``
in ``formats.py``, LAVIS's one-file layouts); ``image`` (``video``, ``audio``)
may be a pattern over the row's fields for layouts that name files by id, and
``captions`` may list several columns separated by commas (Clotho's
``caption_1,...,caption_5``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mmtune.data.formats import (
    BadRow,
    Conversation,
    Mapping,
    Message,
    _get,
    _text,
    clip_options,
    media_entry,
    media_ref,
)
from mmtune.data.instruction_templates import (
    TEMPLATE_KEY,
    draw_template,
    instruction,
    row_rng,
    template_record,
)
from mmtune.modalities import MODALITIES


@dataclass(frozen=True)
class InstructionOptions:
    """A task-format dataset's draw settings (its card's keys, resolved)."""

    templates: list[str]
    answer_selection: str
    caption_samples: str
    seed: int
    references: dict[str, list[str]] = field(default_factory=dict)
    """``caption``: every caption of each image across the file (for one-caption-per-row layouts)."""


def image_ref(row: dict[str, Any], m: Mapping) -> tuple[str, str]:
    """The row's image reference and the field it came from (see :func:`~mmtune.data.formats.media_ref`)."""
    return media_ref(row, m, "image")


def _media_of(m: Mapping) -> str:
    """The dataset's modality: ``caption_pair``'s named media column, else the image of ``vqa`` / ``caption``."""
    return m.media or "image"


def _column_values(row: dict[str, Any], m: Mapping, name: str) -> Any:
    """A field's value; a column list ``a,b,c`` gathers those columns' non-empty values into one list
    (Clotho's ``caption_1`` ... ``caption_5``). None when absent."""
    col = m.columns[name]
    if "," not in col:
        return row.get(col)
    values = [row.get(part.strip()) for part in col.split(",")]
    values = [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())]
    return values or None


def _strings(value: Any, col: str, *, key: str | None = None) -> list[str]:
    """A string or a list of strings (or of ``{key: string}`` objects, as VQAv2's answers); never empty."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise BadRow("wrong field type", col, f"field '{col}' must be a string or a list, got {type(value).__name__}")
    if not items:
        raise BadRow("empty list", col, f"field '{col}' is an empty list")
    out = []
    for i, item in enumerate(items):
        where = col if isinstance(value, str) else f"{col}[{i}]"
        if key is not None and isinstance(item, dict):
            item = item.get(key)
            where = f"{where}.{key}"
        if not isinstance(item, str):
            raise BadRow("wrong field type", where, f"field '{where}' must be a string, got {type(item).__name__}")
        if not item.strip():
            raise BadRow("missing field", where, f"field '{where}' is empty")
        out.append(item)
    return out


def select_answer(answers: list[str], mode: str, rng: Any) -> str:
    """``most_frequent``: the answer most annotators gave (a tie goes to the one seen first);
    ``sample``: one answer with probability proportional to its count (a uniform pick among the
    annotations, repeats kept)."""
    if mode == "sample":
        return answers[int(rng.integers(len(answers)))]
    counts = Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


def _user_turn(template: tuple[int, str], ref: str, field_name: str, question: str | None = None, *,
               modality: str = "image", options: dict[str, Any] | None = None) -> Message:
    return {"role": "user", "content": instruction(template[1], question, MODALITIES[modality].tag),
            "media": [media_entry(modality, ref, field_name, options)],
            TEMPLATE_KEY: template_record(*template)}


def convert_vqa(row: dict[str, Any], m: Mapping, opts: InstructionOptions, index: int) -> list[Conversation]:
    """A question about an image -> a drawn VQA template around the question, and the selected answer.

    Draw order per row (seed, index): the template, then (``sample``) the answer.
    """
    c = m.columns
    ref, image_field = image_ref(row, m)
    question = _text(_get(row, m, "question", required=True), c["question"])
    answers = _strings(_get(row, m, "answers", required=True), c["answers"], key="answer")
    rng = row_rng(opts.seed, index)
    template = draw_template(opts.templates, rng)
    answer: Message = {"role": "assistant", "content": select_answer(answers, opts.answer_selection, rng),
                       "references": answers}
    choices = row.get(c["choices"])
    if choices is not None:
        answer["choices"] = _strings(choices, c["choices"])
        correct = row.get(c["correct_choice"])
        if correct is not None:
            if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(answer["choices"]):
                raise BadRow("wrong field type", c["correct_choice"],
                             f"field '{c['correct_choice']}' must be an index into '{c['choices']}', got {correct!r}")
            answer["correct_choice"] = correct
    return [[_user_turn(template, ref, image_field, question), answer]]


def _captions(row: dict[str, Any], m: Mapping) -> list[str]:
    col = m.columns["captions"]
    value = _column_values(row, m, "captions")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow("missing field", col, f"required field '{col}' is missing or empty")
    return _strings(value, col)


def convert_caption(row: dict[str, Any], m: Mapping, opts: InstructionOptions, index: int) -> list[Conversation]:
    """An image (``caption_pair``: an image, video or audio file) and its caption(s) -> a drawn caption
    template and a caption to train on.

    ``per_caption``: one sample per caption (draws seeded by row index and caption position);
    ``per_row``: one sample, the template then the caption drawn. ``references``: the row's references
    column, else every caption of the file in the data file. ``caption_pair`` rows may give a clip window
    (``start`` / ``end`` seconds), kept as the item's ``options``.
    """
    c = m.columns
    modality = _media_of(m)
    ref, media_field = media_ref(row, m, modality)
    options = clip_options(row, m) if m.media is not None else {}
    captions = _captions(row, m)
    given = _column_values(row, m, "references")
    references = (_strings(given, c["references"]) if given is not None
                  else opts.references.get(ref, captions))
    if opts.caption_samples == "per_row":
        rng = row_rng(opts.seed, index)
        template = draw_template(opts.templates, rng)
        chosen = [(template, captions[int(rng.integers(len(captions)))])]
    else:
        chosen = [(draw_template(opts.templates, row_rng(opts.seed, index, k)), caption)
                  for k, caption in enumerate(captions)]
    return [[_user_turn(template, ref, media_field, modality=modality, options=options),
             {"role": "assistant", "content": caption, "references": list(references)}]
            for template, caption in chosen]


def captions_by_image(rows: Iterable[tuple[str, dict[str, Any]]], m: Mapping) -> dict[str, list[str]]:
    """Every caption of each image (``caption_pair``: each file) over a whole data file, in file order (rows
    that cannot be read are left to the converter to report)."""
    out: dict[str, list[str]] = {}
    for _, row in rows:
        try:
            ref, _ = media_ref(row, m, _media_of(m))
            captions = _captions(row, m)
        except BadRow:
            continue
        out.setdefault(ref, []).extend(captions)
    return out


InstructionConverter = Callable[[dict[str, Any], Mapping, InstructionOptions, int], list[Conversation]]
INSTRUCTION_CONVERTERS: dict[str, InstructionConverter] = {"vqa": convert_vqa, "caption": convert_caption,
                                                            "caption_pair": convert_caption}
"""Task formats: a row, its mapping, the dataset's draw options and the row's index in its file."""


