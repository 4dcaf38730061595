"""Media content parts of a chat request -> files the modalities read, as ``mmtune chat --image/--video/--audio``.

mmtune's media items are files (a modality header-checks a path, then decodes it while batching), so a part
becomes a file: a base64 data URL is written to the request's own temporary folder (its bytes unchanged, so
the model sees exactly what it would see from the same file given to ``mmtune chat``); a local path or
``file://`` URL is taken where it is, only inside ``--media-root``. Remote ``http(s)`` URLs are not fetched.

The part types follow OpenAI and vLLM. Each modality declares its own (``Modality.openai_part``: ``image_url``,
``video_url``, ``audio_url``), a body ``{"url"}``; OpenAI's ``input_audio`` ``{"data": base64, "format": "wav" |
"mp3" | ...}`` is the one part of another shape, read here.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from mmtune.modalities import MODALITIES
from mmtune.modalities.base import MediaProblem
from mmtune.serving.errors import ApiError

INPUT_AUDIO = ("input_audio", "audio")
"""OpenAI's audio part (base64 data and a format, not a URL) and the modality it feeds."""


def part_modalities() -> dict[str, str]:
    """Media content part type -> modality: each registered modality's ``openai_part``, and ``input_audio``."""
    parts = {m.openai_part: name for name, m in MODALITIES.items() if m.openai_part}
    kind, modality = INPUT_AUDIO
    return {**parts, kind: modality} if modality in MODALITIES else parts


@dataclass
class MediaPart:
    """One media part of a request: its modality and where it says the media is."""

    modality: str
    url: str
    """A ``data:`` URL, a ``file://`` URL or a path."""
    param: str
    """Where it is in the request (``messages[0].content[1]``), for errors."""


def media_part_of(part: dict, param: str) -> MediaPart:
    """The :class:`MediaPart` of a content part whose type is in :func:`part_modalities`."""
    kind = part["type"]
    body = part.get(kind)
    if kind == INPUT_AUDIO[0]:
        if not (isinstance(body, dict) and isinstance(body.get("data"), str)):
            raise ApiError(400, "input_audio needs {'data': base64 audio, 'format': 'wav'}", param=param)
        fmt = body.get("format") or "wav"
        return MediaPart(INPUT_AUDIO[1], f"data:audio/{fmt};base64,{body['data']}", param)
    url = body.get("url") if isinstance(body, dict) else body
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{kind} needs {{'url': a data URL or a path}}", param=param)
    return MediaPart(part_modalities()[kind], url, param)


def materialize(part: MediaPart, folder: Path, index: int, media_root: Path | None) -> Path:
    """The file of ``part``, header-checked by its modality: a data URL written under ``folder``, a path taken
    inside ``media_root``. Anything else is a 400 naming the part."""
    modality = MODALITIES[part.modality]
    if part.url.startswith("data:"):
        path = _write_data_url(part, folder / f"{index}-{part.modality}")
    elif part.url.startswith(("http://", "https://")):
        raise ApiError(400, f"remote {part.modality} URLs are not fetched; send a base64 data URL, or a path "
                            "under the server's --media-root", param=part.param, code="unsupported_url")
    else:
        ref = unquote(urlparse(part.url).path) if part.url.startswith("file://") else part.url
        if media_root is None:
            raise ApiError(400, f"local {part.modality} paths are refused: the server was started without "
                                "--media-root; send a base64 data URL", param=part.param, code="path_not_allowed")
        try:
            path = modality.resolve(media_root, ref)
        except MediaProblem:
            raise ApiError(400, f"{part.modality} path '{ref}' is outside the allowed media root",
                           param=part.param, code="path_not_allowed") from None
        if not path.is_file():
            raise ApiError(400, f"{part.modality} file '{ref}' not found under the media root", param=part.param,
                           code="file_not_found")
    try:
        modality.check(path)
    except MediaProblem as exc:
        raise ApiError(400, f"{part.modality} does not decode: {exc.detail.replace(str(folder) + '/', '')}",
                       param=part.param, code=f"invalid_{part.modality}") from None
    return path


def _write_data_url(part: MediaPart, stem: Path) -> Path:
    header, sep, payload = part.url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(400, "a data URL must be 'data:<mime type>;base64,<data>'", param=part.param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{part.modality} data is not valid base64", param=part.param,
                       code=f"invalid_{part.modality}") from None
    mime = header[len("data:"):-len(";base64")]
    suffix = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mp3": ".mp3", "audio/mpeg": ".mp3"}.get(mime) \
        or mimetypes.guess_extension(mime) or ""
    path = stem.with_suffix(suffix)
    path.write_bytes(data)
    return path
