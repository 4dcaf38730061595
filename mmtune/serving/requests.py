"""A ``/v1/chat/completions`` body -> what ``mmtune chat`` decodes: a conversation (media as files) and
:class:`~mmtune.generation.options.GenerationOptions`.

Text parts and media parts of a message keep their order: a media part becomes its modality's tag in the
text (``<image>``), a run of tags is followed by a newline before the next text, as ``mmtune chat --image``
writes it, so ``[image, "What is it?"]`` is the prompt ``<image>\\nWhat is it?``. Options absent from a
request take the server's defaults (its ``--max-new-tokens`` ... flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmtune.data.formats import Conversation
from mmtune.generation.options import GenerationOptions
from mmtune.modalities import MODALITIES
from mmtune.serving.errors import ApiError
from mmtune.serving.media_parts import MediaPart, materialize, media_part_of, part_modalities

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias",
               "parallel_tool_calls", "audio", "modalities", "prediction")
"""OpenAI arguments that would change the reply and that mmtune does not implement: refused, not ignored."""


class ChatRequest(BaseModel):
    """The request arguments mmtune serves; any other argument is refused by name."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    """The newer name of ``max_tokens``; wins when both are given."""
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    logprobs: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    """Accepted and not used (OpenAI's abuse tracking)."""


@dataclass
class ChatJob:
    """A request as mmtune decodes it."""

    conversation: Conversation
    options: GenerationOptions
    stop: list[str] = field(default_factory=list)
    seeded: bool = False
    """A seed was given: the request samples alone, so the same seed gives the same reply as ``mmtune chat``."""
    max_tokens_given: bool = False
    include_usage: bool = False
    """Streamed: a last chunk with the token counts (``stream_options.include_usage``)."""


def parse_request(body: Any) -> ChatRequest:
    """The validated request, or a 400 naming the first bad argument."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in UNSUPPORTED:
        if name in body:
            raise ApiError(400, f"'{name}' is not supported by mmtune serve", param=name, code="unsupported_parameter")
    try:
        req = ChatRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = f"unrecognized request argument '{param}'" if err["type"] == "extra_forbidden" else \
            f"'{param}': {err['msg']}"
        raise ApiError(400, message, param=param, code="invalid_value") from None
    if req.n != 1:
        raise ApiError(400, "n > 1 is not supported: one choice per request", param="n", code="unsupported_value")
    if req.logprobs:
        raise ApiError(400, "logprobs are not supported", param="logprobs", code="unsupported_value")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) != 0.0:
            raise ApiError(400, f"'{name}' is not supported (only 0)", param=name, code="unsupported_value")
    return req


def to_job(req: ChatRequest, defaults: GenerationOptions, media_specs: dict, folder: Path,
           media_root: Path | None, max_media_items: int) -> ChatJob:
    """The request's conversation (its media parts written under ``folder`` or found under ``media_root``)
    and decoding options; media the model has no branch for is a 400."""
    conversation: Conversation = []
    parts: list[tuple[int, MediaPart]] = []
    for i, message in enumerate(req.messages):
        role = ROLES.get(message.get("role"))
        if role is None:
            raise ApiError(400, f"unknown role {message.get('role')!r} (system, user, assistant)",
                           param=f"messages[{i}].role")
        text, media = _content(message.get("content"), f"messages[{i}].content", role)
        conversation.append({"role": role, "content": text})
        parts += [(i, part) for part in media]
    if conversation[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's turn to answer", param="messages")
    if len(parts) > max_media_items:
        raise ApiError(400, f"{len(parts)} media items in the request; at most {max_media_items}",
                       param="messages", code="too_many_media_items")
    for k, (i, part) in enumerate(parts):
        if part.modality not in media_specs:
            have = ", ".join(media_specs) or "text only"
            raise ApiError(400, f"the model takes no {MODALITIES[part.modality].plural} ({have})",
                           param=part.param, code="unsupported_media")
        path = materialize(part, folder, k, media_root)
        conversation[i].setdefault("media", []).append({"modality": part.modality, "ref": str(path),
                                                        "field": part.param})
    return ChatJob(conversation, _options(req, defaults), _stops(req.stop), seeded=req.seed is not None,
                   max_tokens_given=(req.max_completion_tokens or req.max_tokens) is not None,
                   include_usage=bool((req.stream_options or {}).get("include_usage")))


def _content(content: Any, param: str, role: str) -> tuple[str, list[MediaPart]]:
    """A message's text (media as tags, in place) and its media parts."""
    if isinstance(content, str):
        return content, []
    if content is None and role == "assistant":
        return "", []
    if not isinstance(content, list):
        raise ApiError(400, "content must be a string or a list of parts", param=param)
    pieces: list[tuple[bool, str]] = []  # (is a tag, text)
    media: list[MediaPart] = []
    parts = part_modalities()
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append((False, part["text"]))
        elif kind in parts:
            if role != "user":
                raise ApiError(400, f"media parts go in user messages, not {role} ones", param=where)
            media.append(media_part_of(part, where))
            pieces.append((True, MODALITIES[media[-1].modality].tag))
        else:
            raise ApiError(400, f"unknown content part {kind!r} (text, {', '.join(parts)})", param=where)
    text = pieces[0][1] if pieces else ""
    for (was_tag, _), (is_tag, piece) in zip(pieces, pieces[1:]):
        text += ("" if was_tag and is_tag else "\n") + piece  # tags run together; a newline before text
    return text, media


def _options(req: ChatRequest, defaults: GenerationOptions) -> GenerationOptions:
    given = {"max_new_tokens": req.max_completion_tokens or req.max_tokens, "temperature": req.temperature,
             "top_p": req.top_p, "seed": req.seed}
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop: up to 4 non-empty strings", param="stop")
    return stops
