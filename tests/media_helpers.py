"""Tiny media branches, LLaVA rows and a run's losses, shared by the unit and end-to-end tests (no weights, no
downloads)."""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.config.schema import ConnectorConfig, EncoderConfig
from mmtune.modalities.base import FixedTokens, MediaInputSpec
from mmtune.modalities.image import IMAGE, ImageBranchConfig, ImageTransform

OPEN_CLIP_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1},
}
HF_CLIP_TINY = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TOKENS = 16  # (32 / 8) ** 2 patches


def open_clip_image_branch(**connector) -> ImageBranchConfig:
    """A 3-block random open_clip ViT of 32 px (16 patch tokens) + a connector (mlp2x_gelu by default)."""
    encoder = EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY)
    return ImageBranchConfig(encoder=encoder, connector=ConnectorConfig(**({"kind": "mlp2x_gelu"} | connector)))


def image_specs(tokens: int = TOKENS) -> dict[str, MediaInputSpec]:
    """What the data side needs of an image branch with ``tokens`` positions per image (no model built)."""
    transform = ImageTransform(32, (0.5,) * 3, (0.5,) * 3, "pad")
    return {"image": MediaInputSpec(IMAGE, FixedTokens(tokens), transform, text_tokenizer=None, max_text_tokens=128)}


def llava_rows(n: int = 8) -> list[dict]:
    """LLaVA rows: every fourth one text-only, the others one image of ``p{i % 4}.png`` and two turns."""
    rows = []
    for i in range(n):
        if i % 4 == 3:
            rows.append({"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say {i}."},
                                                            {"from": "gpt", "value": f"{i}."}]})
            continue
        rows.append({"id": f"s{i}", "image": f"p{i % 4}.png", "conversations": [
            {"from": "human", "value": f"What is in picture {i}?\n<image>"},
            {"from": "gpt", "value": f"Picture {i} shows coloured noise number {i}."},
            {"from": "human", "value": "Anything else?"},
            {"from": "gpt", "value": "Nothing else."},
        ]})
    return rows


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


def losses_by_step(run_dir: Path) -> list[float]:
    """A run's losses by step (the last record wins when a resumed run logged a step again)."""
    by_step = {}
    for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "loss" in rec:
            by_step[rec["step"]] = rec["loss"]
    return [by_step[k] for k in sorted(by_step)]


def write_video(path: Path, frames: int = 8, size: int = 32, fps: int = 8, *, tone: float | None = None,
                seed: int = 0) -> Path:
    """An mp4 (H.264) of ``frames`` random-coloured frames, with a ``tone`` Hz sound track when given (PyAV)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono") if tone else None
        for i in range(frames):
            pixels = np.full((size, size, 3), rng.integers(0, 255, 3), dtype=np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if audio is not None:
            samples = (0.5 * np.sin(2 * np.pi * tone * np.arange(int(16000 * frames / fps)) / 16000)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples[None], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in audio.encode(frame):
                out.mux(packet)
            for packet in audio.encode():
                out.mux(packet)
    return path


def write_wav(path: Path, seconds: float = 1.0, *, freq: float = 440.0, rate: int = 16000, amplitude: float = 0.5,
              channels: int = 1) -> Path:
    """A 16-bit PCM WAV of a sine tone (stdlib ``wave``); ``amplitude`` 0 writes digital silence."""
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    samples = (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    samples = np.repeat(samples[:, None], channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path
