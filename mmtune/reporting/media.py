"""Media of a validation sample, made small enough to embed: image thumbnails, video frame strips, audio clips.

Everything becomes a ``data:`` URL, so the page needs no file beside it. A
video is a strip of evenly spaced frames from the item's clip window; audio is
re-encoded as 16-bit mono WAV (cut to :data:`AUDIO_SECONDS`), which every
browser's ``<audio>`` plays whatever the source format was. A file that cannot
be read shows as its one-line problem, never as a traceback.
"""

from __future__ import annotations

import base64
import io
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmtune.modalities.base import MediaItem, MediaProblem

THUMBNAIL_PX = 224
"""Longer side of an image thumbnail."""
STRIP_FRAMES, STRIP_FRAME_PX = 8, 112
"""Frames in a video's strip, and the height of each."""
AUDIO_SECONDS, AUDIO_RATE = 30.0, 16000
"""Audio clips embedded at most this long, at this rate (30 s of 16 kHz mono WAV is about 1 MB)."""


@dataclass
class MediaView:
    kind: str
    """``image``, ``strip`` (a video's frames), ``audio`` or ``problem`` (the file could not be read)."""
    url: str
    """A ``data:`` URL (empty for a problem)."""
    caption: str


def image_url(image, px: int = THUMBNAIL_PX) -> str:
    """A PIL image (or a path) as a PNG ``data:`` URL, its longer side at most ``px``."""
    from mmtune.modalities.image import load_rgb

    picture = load_rgb(image) if isinstance(image, (str, Path)) else image.convert("RGB")
    picture = picture.copy()
    picture.thumbnail((px, px))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def frame_strip_url(item: MediaItem, frames: int = STRIP_FRAMES, height: int = STRIP_FRAME_PX) -> str:
    """Evenly spaced frames of the item's clip window, side by side, as one PNG ``data:`` URL."""
    from PIL import Image

    from mmtune.modalities.video import frame_window, open_video, probe_video

    info = item.info if {"frames", "fps"} <= set(item.info) else probe_video(Path(item.path))
    first, last = frame_window(info, item.options)
    reader = open_video(item.path)
    last = min(last, len(reader))
    if last <= first:
        raise MediaProblem("empty video", f"video {item.path} has no frame in the clip window")
    indices = sorted(set(np.linspace(first, last - 1, min(frames, last - first)).round().astype(int).tolist()))
    pictures = [Image.fromarray(np.asarray(f)) for f in reader.get_batch(indices)]
    widths = [round(p.width * height / p.height) for p in pictures]
    strip = Image.new("RGB", (sum(widths) + 2 * (len(pictures) - 1), height), "white")
    x = 0
    for picture, width in zip(pictures, widths):
        strip.paste(picture.resize((width, height)), (x, 0))
        x += width + 2
    return image_url(strip, px=max(strip.size))


def audio_url(item: MediaItem, seconds: float = AUDIO_SECONDS, rate: int = AUDIO_RATE) -> str:
    """The item's clip window (its first ``seconds``) as a 16-bit mono WAV ``data:`` URL."""
    from mmtune.modalities.audio import decode_audio

    start = item.options.get("start")
    end = item.options.get("end")
    limit = (float(start or 0.0)) + seconds
    samples = decode_audio(item.path, rate, start, limit if end is None else min(float(end), limit))
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return "data:audio/wav;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_view(item: MediaItem) -> MediaView:
    return MediaView("image", image_url(item.path), Path(item.path).name)


def _video_view(item: MediaItem) -> MediaView:
    return MediaView("strip", frame_strip_url(item), Path(item.path).name)


def _audio_view(item: MediaItem) -> MediaView:
    return MediaView("audio", audio_url(item), Path(item.path).name + (" (sound track)" if item.companion else ""))


VIEWS = {"image": _image_view, "video": _video_view, "audio": _audio_view}
"""Modality -> how the page shows one of its items."""


def media_view(item: MediaItem) -> MediaView:
    """What the page shows for one media item of a sample (a file it cannot read: that file's one line)."""
    if item.modality not in VIEWS:
        return MediaView("problem", "", f"{Path(item.path).name}: the report has no view of {item.modality} items")
    try:
        return VIEWS[item.modality](item)
    except MediaProblem as exc:
        return MediaView("problem", "", f"{Path(item.path).name}: {exc.detail}")
