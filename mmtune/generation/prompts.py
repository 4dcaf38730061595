"""A conversation -> what a model decodes from: token ids (media tags expanded) and the media to splice in.

Generation uses the same pieces as training: the chat template, media tags
expanded to each branch's token count (``mmtune.data.tokenize``), media items
decoded and preprocessed by the branch's own transform
(``mmtune.modalities``), so a model sees at inference what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmtune.data.formats import BadRow, Conversation
from mmtune.data.media import media_items_of, media_slots
from mmtune.data.templates import render
from mmtune.data.tokenize import encode_prompt
from mmtune.errors import ConfigError, DataError
from mmtune.modalities.base import MediaInputs, MediaItem, MediaProblem, load_media_inputs
from mmtune.models.multimodal.model import MultimodalLM


@dataclass
class Prompt:
    ids: list[int]
    media: list[MediaItem] = field(default_factory=list)
    """The prompt's media items, in the order of their placeholders."""


def model_media_specs(model, tokenizer) -> dict:
    """A multimodal model's input specs per modality (none for a text model)."""
    return model.media_specs(tokenizer) if isinstance(model, MultimodalLM) else {}


def encode_conversation(model, tokenizer, conversation: Conversation, *, where: str = "prompt") -> Prompt:
    """The generation prompt for the next assistant turn of ``conversation``.

    Media references are taken as paths (absolute, or relative to the current
    directory); a model without a branch for a modality refuses its media with
    one clear line.
    """
    text = render(tokenizer, conversation, add_generation_prompt=True)
    specs = model_media_specs(model, tokenizer)
    try:
        items = media_items_of(conversation, specs, root=None, where=where, owner=where)
    except BadRow as exc:
        raise DataError(f"{where}: field '{exc.field_name}': {exc.detail}", reason=exc.reason) from None
    if not specs:
        return Prompt(tokenizer(text, add_special_tokens=False)["input_ids"])
    return Prompt(encode_prompt(tokenizer, text, media_slots(items, specs)), items)


def media_inputs(model, tokenizer, items: list[MediaItem], device=None) -> dict[str, MediaInputs] | None:
    """The decoded, preprocessed media of a batch of prompts, on ``device`` if given (None when there is none)."""
    if not items:
        return None
    try:
        inputs = load_media_inputs(items, model_media_specs(model, tokenizer))
    except MediaProblem as exc:
        raise DataError(exc.detail, reason=exc.reason) from None
    return inputs if device is None else {name: part.to(device) for name, part in inputs.items()}


def check_text_only(conversations) -> None:
    """Proxy tuning and other text-only paths: refuse media with one line."""
    if any(m.get("media") for conv in conversations for m in conv):
        raise ConfigError("proxy tuning combines text models; it cannot take media")
