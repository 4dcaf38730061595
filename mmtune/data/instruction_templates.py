"""Instruction templates for the task formats (``vqa``, ``caption``, ``caption_pair``): InstructBLIP's way of
turning a dataset of questions or captions into instructions.

A template set is data (a YAML file in ``datasets/templates/``), so a new
phrasing needs no code: ``{"templates": [...], "format": "vqa"|"caption"}``
plus ``description`` and ``source``. VQA templates hold ``{question}`` once;
caption templates hold no placeholder (``caption_pair`` datasets read caption
sets too). Templates carry no media tag: the image (video, audio) always comes
first, as in InstructBLIP (the paper writes ``<Image>``), so the user turn is
``<image>`` followed by the rendered template.

Every draw is seeded by the dataset's seed and the row's index in its file,
so the same data gives the same samples whatever the number of workers or
the rows skipped around it, and the drawn template is recorded on the user
message (and in the sample's metadata) under :data:`TEMPLATE_KEY` as
``"<index>: <template>"``: training, ``mmtune data inspect`` and evaluation
all see which phrasing a sample got.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mmtune.errors import ConfigError
from mmtune.modalities import MODALITIES
from mmtune.modalities.image import IMAGE_TAG

TEMPLATE_KEY = "template"
"""User-message key and sample-metadata key of the drawn template (``"<index>: <template>"``)."""
QUESTION = "{question}"
DEFAULT_TEMPLATE_SETS = {"vqa": "instructblip_vqa", "caption": "instructblip_caption",
                         "caption_pair": "instructblip_caption"}
"""The template set each task format draws from when a dataset names none (``caption_pair``: per modality,
:data:`CAPTION_TEMPLATE_SETS`)."""
CAPTION_TEMPLATE_SETS = {"image": "instructblip_caption", "video": "video_caption", "audio": "audio_caption"}
"""``caption_pair``: the default template set of each modality's captions."""
TEMPLATE_KINDS = {"vqa": "vqa", "caption": "caption", "caption_pair": "caption"}
"""The kind of template set (a set file's ``format``) each task format reads."""
INSTRUCTION_FORMATS = tuple(DEFAULT_TEMPLATE_SETS)
_FILE_KEYS = {"description", "source", "format", "templates"}


def check_templates(templates: object, fmt: str, where: str) -> list[str]:
    """``templates`` as a non-empty list of usable templates of format ``fmt``; else one :class:`ConfigError` line."""
    if not isinstance(templates, list) or not templates:
        raise ConfigError(f"{where}: expected a non-empty list of templates")
    for i, text in enumerate(templates):
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}[{i}]: expected a non-empty string, got {text!r}")
        count = text.count(QUESTION)
        if fmt == "vqa" and count != 1:
            raise ConfigError(f"{where}[{i}]: a vqa template holds {QUESTION} exactly once: {text!r}")
        if fmt != "vqa" and count:
            raise ConfigError(f"{where}[{i}]: a {fmt} template has no {QUESTION}: {text!r}")
        tags = [m.tag for m in MODALITIES.values() if m.tag in text]
        if tags:
            raise ConfigError(f"{where}[{i}]: a template holds no media tag ({tags[0]}); the image comes first")
    return list(templates)


def default_template_set(fmt: str, modality: str | None = None) -> str:
    """The template set a dataset of format ``fmt`` (and, for ``caption_pair``, of ``modality``) draws from
    when it names none."""
    if fmt == "caption_pair" and modality in CAPTION_TEMPLATE_SETS:
        return CAPTION_TEMPLATE_SETS[modality]
    return DEFAULT_TEMPLATE_SETS[fmt]


def load_template_set(path: Path, fmt: str) -> list[str]:
    """The templates of a template-set file, checked against the dataset's format ``fmt``."""
    kind = TEMPLATE_KINDS.get(fmt, fmt)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the template set: {exc}".splitlines()[0]) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a template set is a mapping with 'templates' (and 'format', 'description')")
    unknown = set(raw) - _FILE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} (valid: {sorted(_FILE_KEYS)})")
    if raw.get("format", kind) != kind:
        raise ConfigError(f"{path}: a template set for format '{raw['format']}', used by a '{fmt}' dataset")
    return check_templates(raw.get("templates"), kind, f"{path}: templates")


def row_rng(seed: int, index: int, *stream: int) -> np.random.Generator:
    """The generator of one row's draws: a function of the seed, the row's index and a sub-stream only."""
    return np.random.default_rng([seed % 2**64, index, *stream])  # SeedSequence takes no negative seed


def draw_template(templates: list[str], rng: np.random.Generator) -> tuple[int, str]:
    """One template, uniformly (InstructBLIP draws a template per sample)."""
    k = int(rng.integers(len(templates)))
    return k, templates[k]


def instruction(template: str, question: str | None = None, tag: str = IMAGE_TAG) -> str:
    """The user turn: the media tag (default: the image's), then the template with the question filled in."""
    return tag + (template.replace(QUESTION, question) if question is not None else template)


def template_record(index: int, template: str) -> str:
    return f"{index}: {template}"


def template_meta(conv: list[dict]) -> dict[str, str]:
    """The sample metadata of a converted conversation: its drawn template, if any."""
    for msg in conv:
        if TEMPLATE_KEY in msg:
            return {TEMPLATE_KEY: msg[TEMPLATE_KEY]}
    return {}
