"""Assemble a :class:`MultimodalLM` from ``model.media``, and save / load its branches' weights.

Branches are built from their recipe sections by plain builders (encoders,
pieces, connectors). A part that lives in a checkpoint of another format (a
Llava directory's vision tower or projector) is read by ``mmtune.interop``
and handed in ready-made (``build_branch``'s ``encoder`` / ``connector_state``),
so nothing here knows any checkpoint format.

A trained multimodal model's ``final/`` holds ``media.safetensors``: every
branch's connector and pieces, and its encoder when the encoder was trained or
cannot be rebuilt from its name (random or custom), under
``<modality>.<component>.*`` keys. Runs saved before branches existed have
``vision.safetensors`` with ``connector.*`` / ``encoder.*`` keys: the image
branch; both load.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtune.config.media import BranchConfig, EncoderConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.modalities import MODALITIES
from mmtune.modalities.base import MediaInputSpec
from mmtune.models.multimodal.branch import PIECE_BUILDERS, BranchPiece, MediaBranch
from mmtune.models.multimodal.connectors import build_connector
from mmtune.models.multimodal.audio_encoders import AUDIO_PRESETS, build_ast, build_clap, build_whisper
from mmtune.models.multimodal.encoders import MediaEncoder, build_hf, build_open_clip
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.utils.imports import import_object

log = logging.getLogger(__name__)
MEDIA_WEIGHTS = "media.safetensors"
LEGACY_VISION_WEIGHTS = "vision.safetensors"
"""The image branch's weights of runs saved before branches existed (``connector.*``, ``encoder.*``)."""


ENCODER_BUILDERS: dict[str, Callable[[EncoderConfig, str], MediaEncoder]] = {
    "open_clip": build_open_clip, "hf": build_hf, "ast": build_ast, "whisper": build_whisper, "clap": build_clap,
}
"""Built-in encoders by ``encoder.kind``; any other kind is a ``package.module:builder`` called with ``options``."""


def build_encoder(cfg: EncoderConfig, key: str) -> MediaEncoder:
    """A built-in encoder by kind, or ``package.module:builder`` called with ``options``; ``key`` names it in errors."""
    if cfg.kind in ENCODER_BUILDERS:
        encoder = ENCODER_BUILDERS[cfg.kind](cfg, key)
    else:
        builder = import_object(cfg.kind, f"{key}.kind")
        try:
            encoder = builder(**cfg.options)
        except TypeError as exc:  # wrong options, or a class that does not implement the contract
            raise ConfigError(f"{key}: cannot build '{cfg.kind}': {exc}") from None
    if not isinstance(encoder, MediaEncoder):
        raise ConfigError(f"{key}.kind: '{cfg.kind}' built a {type(encoder).__name__}, "
                          "not an mmtune.models.multimodal.encoders.MediaEncoder")
    return encoder


def build_branch(name: str, cfg: BranchConfig, out_dim: int, *, encoder: MediaEncoder | None = None,
                 connector_state: dict[str, torch.Tensor] | None = None,
                 piece_states: dict[str, dict[str, torch.Tensor]] | None = None) -> MediaBranch:
    """The branch of modality ``name``: ``encoder`` when given (read elsewhere), else built from ``cfg``."""
    modality = MODALITIES[name]
    key = f"model.media.{name}"
    encoder = encoder if encoder is not None else build_encoder(cfg.encoder, f"{key}.encoder")
    missing = [a for a in modality.encoder_needs if not hasattr(encoder, a)]
    if missing:
        raise ConfigError(f"{key}.encoder: {type(encoder).__name__} lacks {missing}, which the {name} modality's "
                          "preprocessing reads (see its encoder contract)")
    pieces, dim, tokens = {}, encoder.hidden_size, encoder.num_tokens
    for piece_name, piece_cfg in cfg.pieces.items():
        builder = PIECE_BUILDERS.get(piece_cfg.kind) or import_object(piece_cfg.kind, f"{key}.pieces.{piece_name}.kind")
        try:
            piece = builder(dim=dim, num_tokens=tokens, **piece_cfg.options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}.pieces.{piece_name}: cannot build '{piece_cfg.kind}': {exc}") from None
        if not isinstance(piece, BranchPiece):
            raise ConfigError(f"{key}.pieces.{piece_name}.kind: '{piece_cfg.kind}' built a {type(piece).__name__}, "
                              "not an mmtune.models.multimodal.branch.BranchPiece")
        if piece_states and piece_name in piece_states:
            _load_part(piece, piece_states[piece_name], f"{key}.pieces.{piece_name}.weights")
            log.info("%s piece %s: weights loaded from %s", name, piece_name, piece_cfg.weights)
        pieces[piece_name] = piece
        dim, tokens = piece.output_dim, piece.num_output_tokens(tokens)
    connector = build_connector(cfg.connector, dim, out_dim, f"{key}.connector")
    branch = MediaBranch(modality, cfg, encoder, pieces, connector)
    if connector_state is not None:
        _load_part(branch.connector, connector_state, f"{key}.connector.weights")
        log.info("%s connector weights loaded from %s", name, cfg.connector.weights)
    log.info("%s branch: encoder %s (%d tokens of width %d),%s connector %s -> %d tokens per item",
             name, cfg.encoder.kind if cfg.encoder.architecture is None else f"{cfg.encoder.kind} (architecture)",
             encoder.num_tokens, encoder.hidden_size, f" pieces {list(pieces)}," if pieces else "",
             cfg.connector.kind, branch.num_tokens)
    return branch


def attach_branches(llm: nn.Module, branches: dict[str, MediaBranch]) -> MultimodalLM:
    """The multimodal model, its branches on the LLM's device and in its dtype."""
    anchor = next(llm.parameters())
    for branch in branches.values():
        branch.to(device=anchor.device, dtype=anchor.dtype)
    return MultimodalLM(llm, branches)


def media_specs_without_llm(media: dict[str, BranchConfig], tokenizer=None,
                            encoders: dict[str, MediaEncoder] | None = None) -> dict[str, MediaInputSpec]:
    """What the data side needs per modality, without loading the LLM (``mmtune data inspect``).

    The token count does not depend on the LLM's width, so each branch is
    built with its encoder's width as the output width.
    """
    specs = {}
    for name, cfg in media.items():
        encoder = (encoders or {}).get(name) or build_encoder(cfg.encoder, f"model.media.{name}.encoder")
        specs[name] = build_branch(name, cfg, encoder.hidden_size, encoder=encoder).input_spec(tokenizer)
    return specs


def _load_part(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = str(exc).splitlines()
        raise ConfigError(f"{what}: the weights do not fit: {lines[0]} {lines[1:2]}") from None


# --------------------------------------------------------------------------- saved weights


def media_weights_file(path: str | Path) -> Path:
    """``media.safetensors`` (or a legacy ``vision.safetensors``): the file, or the one in a model / run directory."""
    p = Path(path).expanduser()
    for candidate in (p, p / MEDIA_WEIGHTS, p / "final" / MEDIA_WEIGHTS, p / LEGACY_VISION_WEIGHTS,
                      p / "final" / LEGACY_VISION_WEIGHTS):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"connector weights: no {MEDIA_WEIGHTS} at '{path}' "
                      "(give a file, a model directory or a run directory)")


def _has_branch_keys(state: dict[str, torch.Tensor]) -> bool:
    return any(key.split(".", 1)[0] in MODALITIES for key in state)


def read_media_weights(file: Path) -> dict[str, torch.Tensor]:
    """The weights under ``<modality>.<component>.*`` keys (files written before branches are the image branch's)."""
    state = load_file(str(file))
    return state if _has_branch_keys(state) else {f"image.{k}": v for k, v in state.items()}


def part_of(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def saved_piece_state(path: str | Path, modality: str, piece: str) -> dict[str, torch.Tensor]:
    """A piece's weights from ``media.safetensors`` (a file, model or run directory)."""
    file = media_weights_file(path)
    state = part_of(read_media_weights(file), f"{modality}.pieces.{piece}.")
    if not state:
        raise ConfigError(f"model.media.{modality}.pieces.{piece}.weights: {file} holds no {modality} piece '{piece}'")
    return state


def saved_connector_state(path: str | Path, modality: str) -> dict[str, torch.Tensor]:
    """A branch's connector weights: from ``media.safetensors`` (a file, model or run directory), a former
    ``vision.safetensors`` (``connector.*`` keys), or a safetensors file of the connector's own state dict."""
    file = media_weights_file(path)
    raw = load_file(str(file))
    if _has_branch_keys(raw):
        state = part_of(raw, f"{modality}.connector.")
    elif any(key.startswith("connector.") for key in raw):
        state = part_of(raw, "connector.")
    else:
        state = raw
    if not state:
        raise ConfigError(f"model.media.{modality}.connector.weights: {file} holds no {modality} connector")
    return state


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with any peft adapter (LoRA, LoHa, IA3 ...) merged into plain weights (so loading needs none)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuned = [name for name, sub in module.named_modules() if isinstance(sub, BaseTunerLayer)]
    for name in tuned:
        module.get_submodule(name).merge()

    def adapter_part(key: str) -> bool:  # inside a tuner layer but not its base layer
        return any(key.startswith(f"{t}.") and not key.startswith(f"{t}.base_layer.") for t in tuned)

    return {k.replace(".base_layer.", "."): v.detach().contiguous() for k, v in module.state_dict().items()
            if not adapter_part(k)}


def encoder_is_rebuildable(cfg: EncoderConfig) -> bool:
    """True when the encoder's weights come back from its name alone (a pretrained built-in)."""
    if cfg.kind not in ENCODER_BUILDERS or cfg.architecture is not None:
        return False
    if cfg.kind == "ast":
        return cfg.name not in AUDIO_PRESETS
    return cfg.kind in ("hf", "whisper", "clap") or cfg.pretrained is not None


def save_media_weights(target: Path, model: MultimodalLM, trained_encoders: set[str]) -> list[str]:
    """Write ``media.safetensors``; returns the modalities whose encoder weights are in it."""
    state: dict[str, torch.Tensor] = {}
    with_encoder = []
    for name, branch in model.branches.items():
        for component, module in branch.components().items():
            if component == "encoder":
                if name not in trained_encoders and encoder_is_rebuildable(branch.config.encoder):
                    continue
                with_encoder.append(name)
            state.update({f"{name}.{component}.{k}": v for k, v in merged_state_dict(module).items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(target / MEDIA_WEIGHTS))
    return with_encoder


def load_media_weights(model: MultimodalLM, file: Path) -> None:
    """Load saved branch weights into ``model`` (built from the same sections)."""
    state = read_media_weights(file)
    for name, branch in model.branches.items():
        for component, module in branch.components().items():
            part = part_of(state, f"{name}.{component}.")
            if not part:
                continue
            missing, unexpected = module.load_state_dict(part, strict=False)
            if missing or unexpected:
                raise ModelError(f"{file}: {name} {component} weights do not fit "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
