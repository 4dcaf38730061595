"""Videos: the ``<video>`` tag, header probe, frame sampling set in the recipe, decoding in DataLoader workers.

A video item is a sequence of frames: the branch runs the image encoder on each
sampled frame (see ``MediaBranch``), so frames are resized and normalised by the
encoder's own image preprocessing (:class:`~mmtune.modalities.image.ImageTransform`).

Frame sampling (``model.media.video.frames``; ``train_frames`` for training
batches, e.g. Video-LLaMA's ``headtail``), over the item's clip window (the
``start`` / ``end`` seconds of a data row, else the whole video):

- ``uniform``: ``num_frames`` frames at ``start + floor(k * L / num_frames)`` (Video-LLaMA's evaluation rule);
- ``headtail``: ``num_frames / 2`` distinct random frames from each half of the window, sorted (Video-LLaMA's
  training rule; drawn from the DataLoader worker's seeded torch RNG);
- ``fps``: ``round(seconds x fps)`` frames, clamped to ``[min_frames, max_frames]``, spread uniformly.

How many frames an item gets is known when data is tokenized (the header's
frame count and rate are probed once and kept in the item's ``info``), so a
video's token count is exact in packing and truncation. A window with fewer
frames than asked is never padded or repeated: it is one line naming file, row
and field, or a counted skip.

Files are read with decord (``VideoReader.get_batch``); ``decoder: torchcodec``
reads with torchcodec instead (``benchmarks/bench_video.py`` measures both).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from mmtune.config.media import BranchConfig, Strict
from mmtune.modalities.base import MediaProblem, Modality
from mmtune.modalities.image import ImagePreprocess, ImageTransform

VIDEO_TAG = "<video>"
VIDEO_PLACEHOLDER_ID = -201
"""Never a real token id (images use -200, audio -202)."""

SamplingMode = Literal["uniform", "headtail", "fps"]
VideoDecoder = Literal["decord", "torchcodec"]


class FrameSampling(Strict):
    """Which frames of a video (or of its clip window) an item becomes."""

    mode: SamplingMode = "uniform"
    """``uniform`` (evaluation), ``headtail`` (Video-LLaMA training: half from each half, random), ``fps``."""
    num_frames: int = Field(default=8, ge=1)
    """Frames per item for ``uniform`` and ``headtail`` (Video-LLaMA: 8)."""
    fps: float | None = Field(default=None, gt=0)
    """``fps`` mode: frames per second of video."""
    min_frames: int = Field(default=1, ge=1)
    """``fps`` mode: at least this many frames (a shorter window is an error / counted skip)."""
    max_frames: int = Field(default=32, ge=1)
    """``fps`` mode: at most this many (spread over the whole window)."""

    @model_validator(mode="after")
    def _consistent(self) -> "FrameSampling":
        if self.mode == "headtail" and self.num_frames % 2:
            raise ValueError(f"headtail sampling takes num_frames / 2 from each half: num_frames must be even, "
                             f"got {self.num_frames}")
        if self.mode == "fps" and self.fps is None:
            raise ValueError("mode 'fps' needs fps (frames per second of video)")
        if self.mode != "fps" and self.fps is not None:
            raise ValueError(f"fps is read by mode 'fps' only (mode is '{self.mode}')")
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        return self


class VideoBranchConfig(BranchConfig):
    """``model.media.video``: an image encoder run on every sampled frame, pieces, and a connector."""

    frames: FrameSampling = Field(default_factory=FrameSampling)
    """Frame sampling for evaluation, chat and (without ``train_frames``) training."""
    train_frames: FrameSampling | None = None
    """Frame sampling of training batches (Video-LLaMA: ``{mode: headtail, num_frames: 8}``); null: ``frames``."""
    image_preprocess: ImagePreprocess = "resize"
    """How each frame is fitted to the encoder: ``resize`` (Video-LLaMA reads frames at 224 x 224), ``pad``,
    ``center_crop`` (see ``model.media.image.image_preprocess``)."""
    decoder: VideoDecoder = "decord"
    """The library that reads the files: ``decord`` (the product's choice) or ``torchcodec``."""
    use_audio_in_video: bool = False
    """Also feed each video's sound track, over the same clip window, to the audio branch (``model.media.audio``):
    its tokens follow the video's. A video without a sound track is then an error / counted skip."""

    @field_validator("train_frames")
    @classmethod
    def _same_count(cls, train: FrameSampling | None, info: ValidationInfo) -> FrameSampling | None:
        """Samples are tokenized once, with ``frames``' count, for training and validation alike: training batches
        must fill exactly those positions (a per-frame connector's grow with the frames), so only which frames
        may differ, not how many."""
        frames = info.data.get("frames")
        if train is None or frames is None or _count_rule(train) == _count_rule(frames):
            return train
        raise ValueError(f"takes {_describe_count(train)} per video but frames takes {_describe_count(frames)}; "
                         "data is tokenized with frames' count, so training must take as many (the mode may differ)")


def _count_rule(s: FrameSampling) -> tuple:
    """What decides how many frames ``s`` takes from a window (not which)."""
    return ("fps", s.fps, s.min_frames, s.max_frames) if s.mode == "fps" else ("n", s.num_frames)


def _describe_count(s: FrameSampling) -> str:
    if s.mode == "fps":
        return f"{s.fps} frames per second ({s.min_frames}-{s.max_frames})"
    return f"{s.num_frames} frames"


# --------------------------------------------------------------------------- reading


def probe_video(path: Path) -> dict[str, Any]:
    """Frame count, rate and duration from the container (decord builds its frame index; cheap for clips)."""
    if not path.is_file():
        raise MediaProblem("missing video", f"video file not found: {path}")
    reader = open_video(path, "decord")
    frames, fps = len(reader), float(reader.get_avg_fps() or 0.0)
    if frames == 0:
        raise MediaProblem("empty video", f"video {path} has no frames")
    if not math.isfinite(fps) or fps <= 0:
        raise MediaProblem("unreadable video", f"video {path} reports no frame rate")
    return {"frames": frames, "fps": fps, "duration": frames / fps}


def open_video(path: str | Path, decoder: str = "decord"):
    """An open reader with ``len()``, ``get_avg_fps()`` and ``get_batch(indices) -> [T, H, W, 3] uint8``.

    decord cannot open some files (and its RGB copy fails on some frame widths); those are read with PyAV,
    which decodes every frame up to the last one asked: the same frames, slower.
    """
    try:
        if decoder == "torchcodec":
            return _TorchCodecReader(str(path))
        import decord

        return _DecordWithFallback(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1), str(path))
    except MediaProblem:
        raise
    except Exception as exc:  # decord raises DECORDError, torchcodec RuntimeError / ValueError
        if decoder == "decord":
            return _PyAVReader(str(path), first_error=exc)
        raise MediaProblem("unreadable video", f"cannot read video {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class _DecordWithFallback:
    """decord's reader; a batch it cannot copy out (some frame widths) is decoded by PyAV instead."""

    def __init__(self, reader, path: str):
        self.reader, self.path = reader, path

    def __len__(self) -> int:
        return len(self.reader)

    def get_avg_fps(self) -> float:
        return float(self.reader.get_avg_fps())

    def get_batch(self, indices):
        try:
            return self.reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:  # DECORDError: "DECORDArrayCopyFromTo ... size mismatch"
            return _PyAVReader(self.path, first_error=exc).get_batch(indices)


class _PyAVReader:
    """PyAV behind decord's three calls (frames counted and decoded in presentation order)."""

    def __init__(self, path: str, first_error: Exception | None = None):
        import av

        self.path = path
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise MediaProblem("no video stream", f"{path} has no video stream")
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or 0.0)
                self.frames = int(stream.frames or 0) or sum(1 for _ in container.decode(video=0))
        except MediaProblem:
            raise
        except Exception as exc:
            cause = first_error if first_error is not None else exc
            raise MediaProblem("unreadable video", f"cannot read video {path}: {_first_line(cause)}") from None

    def __len__(self) -> int:
        return self.frames

    def get_avg_fps(self) -> float:
        return self.fps

    def get_batch(self, indices):
        import av

        wanted = sorted(set(int(i) for i in indices))
        found: dict[int, np.ndarray] = {}
        with av.open(self.path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24")
                if i >= wanted[-1]:
                    break
        missing = [i for i in wanted if i not in found]
        if missing:
            raise MediaProblem("unreadable video", f"video {self.path} ends before frame {missing[0]}")
        return np.stack([found[int(i)] for i in indices])


class _TorchCodecReader:
    """torchcodec behind decord's three calls."""

    def __init__(self, path: str):
        try:
            from torchcodec.decoders import VideoDecoder
        except ModuleNotFoundError:
            raise MediaProblem("unreadable video", f"cannot read video {path}: model.media.video.decoder: torchcodec "
                                                   "is not installed (pip install torchcodec), or use decoder: decord") from None

        self.decoder = VideoDecoder(path, dimension_order="NHWC", seek_mode="exact")
        self.meta = self.decoder.metadata

    def __len__(self) -> int:
        return int(self.meta.num_frames or 0)

    def get_avg_fps(self) -> float:
        return float(self.meta.average_fps or 0.0)

    def get_batch(self, indices):
        return self.decoder.get_frames_at(list(indices)).data


def frame_window(info: dict[str, Any], options: dict[str, Any]) -> tuple[int, int]:
    """First and one-past-last frame of the item's clip window (``start`` / ``end`` seconds), inside the video."""
    frames, fps = int(info["frames"]), float(info["fps"])
    start, end = options.get("start"), options.get("end")
    first = 0 if start is None else max(0, int(round(float(start) * fps)))
    last = frames if end is None else min(frames, int(round(float(end) * fps)))
    return first, last


def frames_wanted(sampling: FrameSampling, window: int, fps: float) -> int:
    """How many frames ``sampling`` takes from a window of ``window`` frames at ``fps``."""
    if sampling.mode != "fps":
        return sampling.num_frames
    assert sampling.fps is not None
    n = int(round(window / fps * sampling.fps))
    return min(max(n, sampling.min_frames), sampling.max_frames)


def frame_indices(sampling: FrameSampling, first: int, last: int, fps: float,
                  rng: random.Random | None = None) -> list[int]:
    """The frame indices of one item (raises :class:`MediaProblem` when the window has too few frames)."""
    window = last - first
    n = frames_wanted(sampling, window, fps)
    if window <= 0:
        raise MediaProblem("empty video", "the clip window holds no frame")
    if window < n:
        raise MediaProblem("video too short", f"{window} frame(s) in the clip window but {n} are asked for "
                                              f"({sampling.mode} sampling; model.media.video.frames)")
    if sampling.mode == "headtail":
        rng = rng or random.Random(0)
        half = window // 2
        head = sorted(rng.sample(range(half), n // 2))  # window >= n (even) leaves n / 2 in each half
        tail = sorted(rng.sample(range(half, window), n // 2))
        return [first + i for i in head + tail]
    return [first + int(k * window / n) for k in range(n)]


# --------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class FrameCounter:
    """``counter(item) -> frames`` for one sampling rule: token counts and the too-short check at tokenization."""

    sampling: FrameSampling

    @property
    def rule(self) -> str:
        s = self.sampling
        return f"{s.mode}:{s.num_frames}" if s.mode != "fps" else f"fps:{s.fps}:{s.min_frames}-{s.max_frames}"

    def __call__(self, item) -> int:
        first, last = frame_window(item.info, item.options)
        return len(frame_indices(self.sampling, first, last, float(item.info["fps"]), random.Random(0)))


@dataclass(frozen=True)
class VideoFile:
    """A video item in a worker: the file and its clip window (the branch's transform opens and decodes it, with
    the branch's decoder and frame sampling)."""

    path: str
    options: dict[str, Any]


@dataclass(frozen=True)
class VideoTransform:
    """Video item -> ``[frames, 3, size, size]``: open, sample indices, decode them in one call, preprocess each."""

    sampling: FrameSampling
    frame: ImageTransform
    decoder: str = "decord"

    def __call__(self, video: VideoFile) -> Any:
        import torch
        from PIL import Image

        reader = open_video(video.path, self.decoder)
        frames, fps = len(reader), float(reader.get_avg_fps() or 0.0)
        if frames == 0 or fps <= 0:
            raise MediaProblem("empty video", f"video {video.path} has no frames")
        first, last = frame_window({"frames": frames, "fps": fps}, video.options)
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ()))) if self.sampling.mode == "headtail" else None
        try:
            indices = frame_indices(self.sampling, first, last, fps, rng)
        except MediaProblem as exc:
            raise MediaProblem(exc.reason, f"video {video.path}: {exc.detail}") from None
        try:
            frames = reader.get_batch(indices)
        except MediaProblem:
            raise
        except Exception as exc:
            raise MediaProblem("unreadable video", f"cannot decode frames {indices[:3]}... of video "
                                                   f"{video.path}: {_first_line(exc)}") from None
        frames = frames.asnumpy() if hasattr(frames, "asnumpy") else np.asarray(frames)
        return torch.stack([self.frame(Image.fromarray(f)) for f in frames])


class VideoModality(Modality):
    name = "video"
    tag = VIDEO_TAG
    placeholder_id = VIDEO_PLACEHOLDER_ID
    plural = "videos"
    branch_config = VideoBranchConfig
    encoder_needs = ("image_size", "image_mean", "image_std")
    sequence = True
    companion_key = "use_audio_in_video"
    openai_part = "video_url"

    def companion(self, branch: VideoBranchConfig) -> str | None:
        """The sound track of each video, through the audio branch (``use_audio_in_video``)."""
        return "audio" if branch.use_audio_in_video else None

    def check(self, path: Path) -> dict[str, Any]:
        return probe_video(path)

    def load(self, path: str | Path, options: dict[str, Any]) -> VideoFile:
        """The item as the transform needs it: which frames decode depends on the branch (:class:`VideoTransform`)."""
        return VideoFile(str(path), dict(options))

    def sampling(self, branch: VideoBranchConfig, *, train: bool) -> FrameSampling:
        return branch.train_frames if train and branch.train_frames is not None else branch.frames

    def segment_counter(self, branch: VideoBranchConfig, *, train: bool = False) -> FrameCounter:
        return FrameCounter(self.sampling(branch, train=train))

    def transform(self, branch: VideoBranchConfig, encoder, *, train: bool = False) -> VideoTransform:
        frame = ImageTransform(encoder.image_size, encoder.image_mean, encoder.image_std, branch.image_preprocess)
        return VideoTransform(self.sampling(branch, train=train), frame, branch.decoder)


VIDEO = VideoModality()
