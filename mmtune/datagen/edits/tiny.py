"""A tiny random open_clip model in open_clip's ``local-dir:`` layout: for tests and CPU demonstrations of the filter.

``open_clip_config.json`` (the model config, with a Hugging Face tokenizer in
the same folder), ``open_clip_model.safetensors`` (random weights) and the
tokenizer files: CLIP's own byte-level BPE cut to its first merges, as the tiny
Stable Diffusion's tokenizer is (``write_clip_tokenizer``). It opens the way a
real local model does (``open_clip.create_model_and_transforms("local-dir:DIR")``,
``open_clip.get_tokenizer("local-dir:DIR")``), so the filter's code path is the
real one; its similarities are those of a random network.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_ALIAS = "tiny-open-clip"


def tiny_open_clip_config(vocab_size: int, *, image_size: int = 32, embed_dim: int = 16) -> dict:
    """A 2-block ViT of ``image_size`` px (8 px patches) and a 1-layer text tower, ``embed_dim`` wide joint space."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": vocab_size, "width": 16, "heads": 2, "layers": 1,
                     "hf_tokenizer_name": "local"},  # any name: with local-dir:, open_clip reads the folder's tokenizer
    }


def write_tiny_open_clip(out: Path, *, seed: int = 0, image_size: int = 32, merges: int = 256) -> Path:
    """Write a random tiny open_clip model, its config and its tokenizer to ``out``."""
    import open_clip
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from mmtune.models.diffusion.tiny import write_clip_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(out, merges=merges)
    cfg = tiny_open_clip_config(len(AutoTokenizer.from_pretrained(out)), image_size=image_size)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}, indent=2) + "\n")
    return out


def resolve_tiny_open_clip() -> Path:
    """The cached ``tiny-open-clip`` directory (seed 0), built once."""
    from mmtune.models.aliases import cache_root
    from mmtune.utils.atomic import built_once

    return built_once(cache_root() / "models" / TINY_CLIP_ALIAS, "open_clip_config.json", write_tiny_open_clip)
