"""Open the models a recipe or a command names, whatever checkpoint format holds each part.

A recipe's LLM (``model.name``), a branch's encoder (``encoder.name``) and
connector weights (``connector.weights``) may each be a plain Hugging Face
model, an mmtune run, or a part of a checkpoint of another format (a Llava
directory). This is the one module that asks ``mmtune.interop`` which format a
directory is; the generic loaders it calls know none. An mmtune ``final/``
holding a LoRA adapter opens as its base with the adapter merged, so a run can
start from an earlier run (``init_from``) and a chain of such runs opens link
by link.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from mmtune.config.media import BranchConfig
from mmtune.config.schema import ModelConfig
from mmtune.errors import ModelError
from mmtune.interop import reader_for
from mmtune.modalities.base import MediaInputSpec
from mmtune.models.loading import causal_lm_kwargs, load_causal_lm, resolve_source
from mmtune.models.multimodal.branch import MediaBranch
from mmtune.models.multimodal.build import (
    attach_branches,
    build_branch,
    media_specs_without_llm,
    saved_connector_state,
    saved_piece_state,
)
from mmtune.models.multimodal.encoders import MediaEncoder
from mmtune.models.multimodal.model import MultimodalLM

MMTUNE_META = "mmtune.json"
"""What a run's ``final/`` says about itself: family, base model, method (written by ``run_outputs.save_final``)."""


def open_language_model(cfg: ModelConfig, *, device_type: str = "cpu", quantization_config: Any = None) -> nn.Module:
    """The causal LM of ``model.name``: a plain checkpoint, an mmtune adapter ``final/`` (merged into its base),
    or the language model part of another format's checkpoint."""
    source = resolve_source(cfg)
    if (Path(source) / MMTUNE_META).is_file() and (Path(source) / "adapter_config.json").is_file():
        return _merged_adapter(Path(source), cfg, device_type=device_type, quantization_config=quantization_config)
    reader = reader_for(source)
    if reader is None:
        return load_causal_lm(cfg, device_type=device_type, quantization_config=quantization_config)
    try:
        return reader.language_model(source, **causal_lm_kwargs(cfg, device_type=device_type,
                                                                quantization_config=quantization_config))
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the language model of '{cfg.name}': {str(exc).splitlines()[0]}") from None


def _merged_adapter(final: Path, cfg: ModelConfig, *, device_type: str, quantization_config: Any) -> nn.Module:
    """An adapter ``final/`` as one plain model: its base (opened by the same rules) with the adapter merged.

    Loading settings (dtype, attention, remote code) are ``cfg``'s; which base is the adapter's own.
    """
    from peft import PeftModel

    if quantization_config is not None:
        raise ModelError(f"{final}: an adapter run cannot be merged into a quantized (qlora) base; use lora")
    saved = json.loads((final / MMTUNE_META).read_text())["base_model"]
    base = cfg.model_copy(update={k: saved[k] for k in ("name", "gguf_file", "revision")})
    return PeftModel.from_pretrained(open_language_model(base, device_type=device_type), str(final)).merge_and_unload()


def _encoder_from_checkpoint(name: str, cfg: BranchConfig) -> MediaEncoder | None:
    if cfg.encoder.architecture is not None:
        return None
    reader = reader_for(cfg.encoder.name)
    return None if reader is None else reader.image_encoder(cfg.encoder, f"model.media.{name}.encoder")


def _piece_state(modality: str, piece: str, weights: str) -> dict:
    """A piece's saved weights; from a BLIP-2 / InstructBLIP directory, its Q-Former and queries (no projection)."""
    reader = reader_for(weights)
    if reader is None:
        return saved_piece_state(weights, modality, piece)
    state = reader.connector_state(weights, modality)
    return {k: v for k, v in state.items() if k.startswith(("qformer.", "query_tokens"))}


def open_branches(media: dict[str, BranchConfig], out_dim: int) -> dict[str, MediaBranch]:
    """Every branch of ``model.media``, its parts read from whichever checkpoints the recipe names."""
    branches = {}
    for name, cfg in media.items():
        state = None
        if cfg.connector.weights:
            reader = reader_for(cfg.connector.weights)
            state = (reader.connector_state(cfg.connector.weights, name) if reader is not None
                     else saved_connector_state(cfg.connector.weights, name))
        pieces = {piece: _piece_state(name, piece, piece_cfg.weights)
                  for piece, piece_cfg in cfg.pieces.items() if piece_cfg.weights}
        branches[name] = build_branch(name, cfg, out_dim, encoder=_encoder_from_checkpoint(name, cfg),
                                      connector_state=state, piece_states=pieces)
    return branches


def open_multimodal(media: dict[str, BranchConfig], llm: nn.Module) -> MultimodalLM:
    """``llm`` with a branch per modality of ``media`` in front of it."""
    return attach_branches(llm, open_branches(media, llm.config.get_text_config().hidden_size))


def open_media_specs(media: dict[str, BranchConfig], tokenizer=None) -> dict[str, MediaInputSpec]:
    """What the data side needs per modality, without loading the LLM (``mmtune data inspect``)."""
    encoders = {name: enc for name, cfg in media.items() if (enc := _encoder_from_checkpoint(name, cfg)) is not None}
    return media_specs_without_llm(media, tokenizer, encoders)
