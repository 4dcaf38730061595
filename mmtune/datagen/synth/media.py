"""Writing and blanking the clips and sounds of the synthetic tasks (PyAV for mp4, the stdlib for WAV).

- a :class:`Clip` (frames, frame rate, optional mono sound track) is an mp4: H.264 (libx264, yuv420p, one thread,
  so the same frames give the same bytes), and its sound, when it has one, AAC mono at 16 kHz, with timestamps
  that put sample 0 at time 0 (the encoder's priming samples are skipped by decoders);
- a :class:`Sound` is a 16-bit PCM mono WAV at 16 kHz;
- a blank clip has the same size, frame count, frame rate and sound length: every frame uniform grey and digital
  silence (or only one of the two, ``only="frames"`` / ``only="sound"``: the other stream is copied unchanged);
  a blank sound is digital silence of the same length.

``av`` is imported only when a clip is written or read, so image tasks run without it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import wave
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
"""The sample rate of every sound (WAV files and clips' sound tracks)."""
GREY = (128, 128, 128)
"""Every pixel of a blank frame (``common.BLANK_GREY``)."""
VIDEO_CODEC = "libx264"
AUDIO_BITRATE = 48000
X264_OPTIONS = {"preset": "ultrafast", "crf": "16", "threads": "1"}
BLANK_PARTS = ("frames", "sound")
"""What ``only=`` may blank alone in a clip with a sound track."""


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 (clipped, rounded)."""
    return np.round(np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0) * 32767).astype(np.int16)


@dataclass(frozen=True)
class Sound:
    samples: np.ndarray = field(repr=False)
    """Mono float samples in [-1, 1] at :data:`SAMPLE_RATE`."""

    @functools.cached_property
    def pcm(self) -> np.ndarray:
        return to_pcm16(self.samples)

    def key(self) -> bytes:
        return hashlib.blake2b(self.pcm.tobytes(), digest_size=16, person=b"sound").digest()


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray = field(repr=False)
    """``[T, H, W, 3]`` uint8 RGB."""
    fps: int
    audio: np.ndarray | None = field(default=None, repr=False)
    """Mono float samples in [-1, 1] at :data:`SAMPLE_RATE`, or None for a silent clip (no sound track)."""

    def key(self) -> bytes:
        h = hashlib.blake2b(digest_size=16, person=b"clip")
        h.update(np.ascontiguousarray(self.frames, dtype=np.uint8).tobytes())
        h.update(b"%d|" % self.fps)
        if self.audio is not None:
            h.update(to_pcm16(self.audio).tobytes())
        return h.digest()


# --------------------------------------------------------------------------- writing


def wav_bytes(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buf.getvalue()


def save_wav(sound: Sound, path: Path) -> None:
    Path(path).write_bytes(wav_bytes(sound.pcm))


def _add_video(container, width: int, height: int, fps: int, crf: int | None = None):
    stream = container.add_stream(VIDEO_CODEC, rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.options = {**X264_OPTIONS, **({} if crf is None else {"crf": str(crf)})}
    stream.codec_context.thread_count = 1
    return stream


def _add_audio(container):
    stream = container.add_stream("aac", rate=SAMPLE_RATE)
    stream.codec_context.layout = "mono"
    stream.bit_rate = AUDIO_BITRATE
    return stream


def _encode_frames(container, stream, frames: np.ndarray) -> None:
    import av

    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def _encode_audio(container, stream, pcm: np.ndarray) -> None:
    import av

    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16)[None], format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts, frame.time_base = 0, Fraction(1, SAMPLE_RATE)  # a pts: the muxer then records the priming delay
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def mp4_bytes(frames: np.ndarray, fps: int, pcm: np.ndarray | None = None, *, crf: int | None = None) -> bytes:
    """H.264 frames (and an int16 mono 16 kHz sound track, AAC) in an mp4, as bytes; ``crf``: x264's quality
    (lower: better, larger; default 16)."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    _, height, width, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        video = _add_video(container, width, height, fps, crf)
        audio = None if pcm is None else _add_audio(container)
        _encode_frames(container, video, frames)
        if audio is not None:
            _encode_audio(container, audio, pcm)
    return buf.getvalue()


def save_mp4(clip: Clip, path: Path) -> None:
    Path(path).write_bytes(mp4_bytes(clip.frames, clip.fps, None if clip.audio is None else to_pcm16(clip.audio)))


# --------------------------------------------------------------------------- reading (for blanking and tests)


@dataclass(frozen=True)
class ClipInfo:
    width: int
    height: int
    frames: int
    fps: Fraction
    audio_samples: int | None
    """Samples of the sound track (None: no sound track)."""


def probe_mp4(path: Path) -> ClipInfo:
    import av

    with av.open(str(path)) as container:
        v = container.streams.video[0]
        frames = v.frames or sum(1 for _ in container.decode(video=0))
        info = (v.codec_context.width, v.codec_context.height, frames, Fraction(v.average_rate))
        samples = None
        if container.streams.audio:
            samples = len(read_audio(path))
    return ClipInfo(*info, samples)


def read_audio(path: Path) -> np.ndarray:
    """The (first) sound stream of a media file as mono float32 samples, decoded by PyAV, trimmed to the
    stream's duration (AAC pads its last frame)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = []
        for frame in container.decode(stream):
            data = frame.to_ndarray()
            channels = frame.layout.nb_channels
            if not frame.format.is_planar:
                data = data.reshape(-1, channels).T
            if data.dtype.kind == "i":
                data = data / float(np.iinfo(data.dtype).max + 1)
            chunks.append(data.astype(np.float32).mean(axis=0))
        data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        if stream.duration is not None and stream.time_base is not None:
            n = round(float(stream.duration * stream.time_base) * stream.rate)
            data = data[:n]
    return data.astype(np.float32)


def read_frames(path: Path) -> np.ndarray:
    """Every frame of a clip as ``[T, H, W, 3]`` uint8 RGB, decoded by PyAV."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# --------------------------------------------------------------------------- blanking


@functools.lru_cache(maxsize=32)
def _silent_wav(samples: int) -> bytes:
    return wav_bytes(np.zeros(samples, np.int16))


def blank_wav(path: Path, only: str | None = None) -> bytes:
    with wave.open(str(path), "rb") as w:
        return _silent_wav(w.getnframes())


@functools.lru_cache(maxsize=32)
def _grey_mp4(width: int, height: int, frames: int, fps: Fraction, audio_samples: int | None) -> bytes:
    grey = np.empty((frames, height, width, 3), np.uint8)
    grey[...] = GREY
    pcm = None if audio_samples is None else np.zeros(audio_samples, np.int16)
    return mp4_bytes(grey, fps, pcm)


def blank_mp4(path: Path, only: str | None = None) -> bytes:
    """The blank counterpart of a clip: grey frames and silence; ``only`` blanks just ``frames`` or ``sound`` and
    copies the other stream's packets unchanged."""
    import av

    info = probe_mp4(path)
    if only is None or info.audio_samples is None and only == "frames":
        return _grey_mp4(info.width, info.height, info.frames, info.fps, info.audio_samples)
    if only not in BLANK_PARTS:
        raise ValueError(f"only: one of {', '.join(BLANK_PARTS)}, got {only!r}")
    if info.audio_samples is None:  # nothing to silence
        return Path(path).read_bytes()
    buf = io.BytesIO()
    with av.open(str(path)) as source, av.open(buf, "w", format="mp4") as container:
        keep = source.streams.audio[0] if only == "frames" else source.streams.video[0]
        copied = container.add_stream_from_template(keep)
        if only == "frames":
            grey = np.empty((info.frames, info.height, info.width, 3), np.uint8)
            grey[...] = GREY
            _encode_frames(container, _add_video(container, info.width, info.height, info.fps), grey)
        else:
            _encode_audio(container, _add_audio(container), np.zeros(info.audio_samples, np.int16))
        for packet in source.demux(keep):
            if packet.dts is None:
                continue
            packet.stream = copied
            container.mux(packet)
    return buf.getvalue()
