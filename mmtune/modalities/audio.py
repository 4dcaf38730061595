"""Audio: the ``<audio>`` tag, header probe, decoding to mono at the encoder's rate, clips, features.

An audio item is a sequence of clips (ImageBind: 3 clips of 2 s; Video-LLaMA:
8), each turned into the encoder's input features by the encoder's own feature
extractor (``encoder.audio_features``: the 128-bin log-mel filterbank of 204
frames of ImageBind / AST for ``kind: ast``), and encoded on its own by the
branch (see ``MediaBranch``).

Files are decoded with PyAV, so any container works: WAV, FLAC, MP3, and the
sound track of a video (``model.media.video.use_audio_in_video`` adds an audio
item for it, over the video's clip window). Decoding downmixes to mono and
resamples to the encoder's ``sampling_rate`` (16 kHz for AST / ImageBind and
Whisper, 48 kHz for CLAP). Clip start times (``model.media.audio.clip_sampling``):

- ``even``: clip k of N starts at ``k x max(D - clip, 0) / N`` (ImageBind's ``ConstantClipsPerVideoSampler``, so
  the tail is never covered, as published); a window shorter than a clip gives N identical zero-padded clips;
- ``random``: ``clips`` start times drawn uniformly (training), sorted.

A file with no sound track, that does not decode, or that is digital silence
(unless ``allow_silence``: the silenced control of a demo) is one line naming
file, row and field, or a counted skip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from mmtune.config.media import BranchConfig, EncoderConfig
from mmtune.modalities.base import MediaProblem, Modality

AUDIO_TAG = "<audio>"
AUDIO_PLACEHOLDER_ID = -202
"""Never a real token id (images use -200, videos -201)."""
SILENCE = 1e-6
"""Peak amplitude (of full scale 1.0) under which a decoded item counts as silent."""

ClipSampling = Literal["even", "random"]


def _ast_encoder() -> EncoderConfig:
    return EncoderConfig(kind="ast", name="imagebind_huge_audio", pretrained=None, select_layer=-1,
                         select_feature="cls")


class AudioBranchConfig(BranchConfig):
    """``model.media.audio``: an audio encoder run on every clip, pieces, and a connector."""

    encoder: EncoderConfig = Field(default_factory=_ast_encoder)
    """Default: the ImageBind-style audio ViT (``kind: ast``), its per-clip CLS feature."""
    clips: int = Field(default=3, ge=1)
    """Clips per item (ImageBind: 3; Video-LLaMA: 8)."""
    clip_seconds: float = Field(default=2.0, gt=0)
    """Length of one clip (ImageBind: 2 s, i.e. 204 filterbank frames at a 10 ms shift)."""
    clip_sampling: ClipSampling = "even"
    """Where the clips start: ``even`` (ImageBind) or ``random`` (sorted uniform draws)."""
    train_clip_sampling: ClipSampling | None = None
    """Clip sampling of training batches; null: ``clip_sampling``."""
    allow_silence: bool = False
    """Accept items that decode to digital silence (a silenced control); otherwise they are bad samples."""


# --------------------------------------------------------------------------- reading


def probe_audio(path: Path) -> dict[str, Any]:
    """Duration and native rate of the file's first sound track (a video's too), from the container."""
    import av

    if not path.is_file():
        raise MediaProblem("missing audio", f"audio file not found: {path}")
    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise MediaProblem("no audio stream", f"{path} has no sound track")
            stream = streams[0]
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = float("nan")
            rate = int(stream.rate or 0)
    except MediaProblem:
        raise
    except Exception as exc:  # av.error.InvalidDataError, FileNotFoundError ...
        raise MediaProblem("unreadable audio", f"cannot read audio {path}: {_first_line(exc)}") from None
    if rate <= 0 or duration == 0:
        raise MediaProblem("empty audio", f"audio {path} is empty")
    return {"duration": duration, "sample_rate": rate}


def decode_audio(path: str | Path, rate: int, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The first sound track as mono float32 at ``rate`` Hz, cut to ``[start, end)`` seconds."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise MediaProblem("no audio stream", f"{path} has no sound track")
            # Channels are averaged here: libswresample's mono downmix sums them at -3 dB each, so a stereo file
            # would come out 3 dB louder than the same sound in mono (the features depend on level).
            resampler = av.AudioResampler(format="fltp", rate=rate)
            chunks = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except MediaProblem:
        raise
    except Exception as exc:
        raise MediaProblem("unreadable audio", f"cannot decode audio {path}: {_first_line(exc)}") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    first = 0 if start is None else max(0, int(round(float(start) * rate)))
    last = len(wave) if end is None else min(len(wave), int(round(float(end) * rate)))
    wave = wave[first:last]
    if len(wave) == 0:
        raise MediaProblem("empty audio", f"audio {path} has no samples in the clip window")
    return wave


def clip_starts(total: int, clip: int, clips: int, mode: str, rng: random.Random | None = None) -> list[int]:
    """Start samples of ``clips`` clips of ``clip`` samples in ``total`` samples."""
    room = max(total - clip, 0)
    if mode == "random":
        rng = rng or random.Random(0)
        return sorted(rng.randint(0, room) for _ in range(clips))
    return [int(k * room / clips) for k in range(clips)]  # pytorchvideo's ConstantClipsPerVideoSampler


def cut_clips(wave: np.ndarray, clip: int, starts: list[int]) -> list[np.ndarray]:
    """Each clip, zero-padded at the end when the wave is shorter than a clip."""
    out = []
    for s in starts:
        piece = wave[s:s + clip]
        if len(piece) < clip:
            piece = np.concatenate([piece, np.zeros(clip - len(piece), np.float32)])
        out.append(piece)
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class ClipCounter:
    """Every audio item has ``clips`` clips (short ones are zero-padded)."""

    clips: int

    @property
    def rule(self) -> str:
        return f"clips:{self.clips}"

    def __call__(self, item) -> int:
        return self.clips


@dataclass(frozen=True)
class AudioFile:
    """An audio item in a worker: the file and its clip window (decoded by the branch's transform)."""

    path: str
    options: dict[str, Any]


@dataclass(frozen=True)
class AudioTransform:
    """Audio item -> ``[clips, ...]``: decode at the encoder's rate, cut clips, the encoder's features per clip."""

    sampling_rate: int
    clips: int
    clip_seconds: float
    sampling: str
    features: Any
    """The encoder's ``audio_features``: ``list[np.ndarray]`` (clips at ``sampling_rate``) -> ``[clips, ...]``."""
    allow_silence: bool = False

    def __call__(self, audio: AudioFile) -> Any:
        import torch

        wave = decode_audio(audio.path, self.sampling_rate, audio.options.get("start"), audio.options.get("end"))
        if not self.allow_silence and float(np.abs(wave).max()) < SILENCE:
            raise MediaProblem("silent audio", f"audio {audio.path} is silent (model.media.audio.allow_silence "
                                               "accepts silent items)")
        clip = int(round(self.clip_seconds * self.sampling_rate))
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ()))) if self.sampling == "random" else None
        pieces = cut_clips(wave, clip, clip_starts(len(wave), clip, self.clips, self.sampling, rng))
        return self.features(pieces)


class AudioModality(Modality):
    name = "audio"
    tag = AUDIO_TAG
    placeholder_id = AUDIO_PLACEHOLDER_ID
    plural = "audio items"
    openai_part = "audio_url"
    branch_config = AudioBranchConfig
    encoder_needs = ("sampling_rate", "audio_features")
    sequence = True

    def check(self, path: Path) -> dict[str, Any]:
        return probe_audio(path)

    def load(self, path: str | Path, options: dict[str, Any]) -> AudioFile:
        """The item as the transform needs it (the rate to decode at is the encoder's: :class:`AudioTransform`)."""
        return AudioFile(str(path), dict(options))

    def segment_counter(self, branch: AudioBranchConfig, *, train: bool = False) -> ClipCounter:
        return ClipCounter(branch.clips)

    def transform(self, branch: AudioBranchConfig, encoder, *, train: bool = False) -> AudioTransform:
        sampling = branch.train_clip_sampling if train and branch.train_clip_sampling else branch.clip_sampling
        return AudioTransform(int(encoder.sampling_rate), branch.clips, branch.clip_seconds, sampling,
                              encoder.audio_features, branch.allow_silence)


AUDIO = AudioModality()
