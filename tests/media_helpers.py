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
