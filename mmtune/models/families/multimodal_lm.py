"""The multimodal LM family's run output: the LLM's files plus the branches' weights and sections.

``final/`` holds what the causal LM family holds for the LLM (nothing when
the LLM was frozen: it is the base model), ``media.safetensors`` (see
``mmtune.models.multimodal.build``) and, in ``mmtune.json``, each branch's
recipe section and which encoders' weights were saved. Export:
``mmtune.interop.hf_llava``.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mmtune.config.schema import ModelConfig
from mmtune.models.families.causal_lm import load_llm, save as save_llm
from mmtune.models.multimodal.build import load_media_weights, media_weights_file, save_media_weights
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.models.open import open_multimodal

NAME = "multimodal_lm"


def save(target: Path, model: MultimodalLM, *, base: ModelConfig, llm_trained: bool, trained_encoders: set[str],
         initial_adapter: Path | None = None, merge_adapter: bool = False) -> dict:
    save_llm(target, model.llm, trained=llm_trained, initial_adapter=initial_adapter, merge_adapter=merge_adapter)
    saved = save_media_weights(target, model, trained_encoders)
    return {"media": {name: cfg.model_dump(mode="json") for name, cfg in base.branches().items()},
            "encoders_saved": saved}


def load(path: Path, meta: dict, base: ModelConfig, *, device_type: str, merge: bool) -> nn.Module:
    """Rebuild the branches around the loaded LLM, then load their saved weights."""
    llm = load_llm(path, base, device_type=device_type, merge=merge)
    media = ModelConfig(media=meta["media"]).branches()
    for name, cfg in media.items():
        cfg.connector.weights = None  # the saved weights below replace any starting point
        if name in meta["encoders_saved"] and cfg.encoder.kind == "open_clip":
            cfg.encoder.pretrained = None  # the weights are in media.safetensors: nothing to fetch
    model = open_multimodal(media, llm)
    load_media_weights(model, media_weights_file(path))
    return model
