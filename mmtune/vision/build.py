"""Assemble a :class:`MultimodalLM` from a recipe, set what trains per component, save and load it.

Freezing is explicit per component (``method.encoder``, ``method.connector``,
and ``method.name`` for the LLM) and logged. A trained multimodal model is
saved as the LLM's usual files (adapter or full weights; none when the LLM was
frozen) plus ``vision.safetensors`` (connector, and the encoder when it was
trained or cannot be rebuilt from a name) and the vision spec in ``mmtune.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtune.config.schema import ComponentMethod, EncoderConfig, LoraConfig, VisionConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.vision.connectors import build_connector
from mmtune.vision.encoders import ENCODER_BUILDERS, build_encoder
from mmtune.vision.images import ImageTransform
from mmtune.vision.model import MultimodalLM

log = logging.getLogger(__name__)
VISION_WEIGHTS = "vision.safetensors"


def build_multimodal(vision: VisionConfig, llm: nn.Module) -> MultimodalLM:
    encoder = build_encoder(vision.encoder)
    hidden = llm.config.get_text_config().hidden_size
    connector = build_connector(vision.connector, encoder.hidden_size, hidden)
    if vision.connector.weights:
        load_connector_weights(connector, vision.connector.weights)
    anchor = next(llm.parameters())
    encoder.to(device=anchor.device, dtype=anchor.dtype)
    connector.to(device=anchor.device, dtype=anchor.dtype)
    transform = ImageTransform(encoder.image_size, encoder.image_mean, encoder.image_std, vision.image_preprocess)
    model = MultimodalLM(encoder, connector, llm, transform)
    log.info("vision: encoder %s (%d tokens of width %d at %dpx), connector %s -> %d tokens per image",
             vision.encoder.kind if vision.encoder.architecture is None else f"{vision.encoder.kind} (architecture)",
             encoder.num_tokens, encoder.hidden_size, encoder.image_size, vision.connector.kind, model.num_image_tokens)
    return model


def count_image_tokens(vision: VisionConfig) -> int:
    """Tokens per image, for tools that need the data layout without the LLM (data inspect)."""
    encoder = build_encoder(vision.encoder)
    connector = build_connector(vision.connector, encoder.hidden_size, encoder.hidden_size)
    return connector.num_output_tokens(encoder.num_tokens)


def vision_weights_file(path: str | Path) -> Path:
    """A ``vision.safetensors`` file, or the one in a model / run directory."""
    p = Path(path).expanduser()
    for candidate in (p, p / VISION_WEIGHTS, p / "final" / VISION_WEIGHTS):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"model.vision.connector.weights: no {VISION_WEIGHTS} at '{path}' "
                      "(give a file, a model directory or a run directory)")


def load_connector_weights(connector: nn.Module, path: str | Path) -> None:
    from mmtune.vision.import_llava import llava_config, projector_state

    if llava_config(path) is not None:  # a Llava checkpoint: its projector
        file, state = Path(path), projector_state(path)
    else:
        file = vision_weights_file(path)
        state = load_file(str(file))
    if any(k.startswith("connector.") for k in state):
        state = {k.removeprefix("connector."): v for k, v in state.items() if k.startswith("connector.")}
    try:
        connector.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"model.vision.connector.weights: {file} does not fit this connector: "
                          f"{str(exc).splitlines()[0]} {str(exc).splitlines()[1:2]}") from None
    log.info("connector weights loaded from %s", file)


# --------------------------------------------------------------------------- what trains


def set_component_trainable(module: nn.Module, method: ComponentMethod, lora: LoraConfig, name: str) -> None:
    if method.trainable == "frozen":
        module.requires_grad_(False)
    elif method.trainable == "full":
        module.requires_grad_(True)
    else:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        targets = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear) and n})
        if not targets:
            raise ConfigError(f"method.{name}.trainable: lora needs Linear layers; this {name} has none")
        module.requires_grad_(False)
        inject_adapter_in_model(PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=targets, use_dora=lora.use_dora,
                                               use_rslora=lora.use_rslora), module)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("%s: %s (%s trainable parameters)", name, method.trainable, f"{trained:,}")


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with any LoRA merged into plain weights (so loading needs no adapter)."""
    from peft.tuners.lora import LoraLayer

    for sub in module.modules():
        if isinstance(sub, LoraLayer):
            sub.merge()
    return {k.replace(".base_layer.", "."): v.detach().contiguous() for k, v in module.state_dict().items()
            if "lora_" not in k}


def encoder_is_rebuildable(cfg: EncoderConfig) -> bool:
    """True when the encoder's weights come back from its name alone (a pretrained built-in)."""
    if cfg.kind not in ENCODER_BUILDERS or cfg.architecture is not None:
        return False
    return cfg.kind == "hf" or cfg.pretrained is not None


def save_vision(target: Path, model: MultimodalLM, vision: VisionConfig, encoder_trained: bool) -> bool:
    """Write ``vision.safetensors``; returns whether the encoder's weights are in it."""
    state = {f"connector.{k}": v for k, v in merged_state_dict(model.connector).items()}
    with_encoder = encoder_trained or not encoder_is_rebuildable(vision.encoder)
    if with_encoder:
        state.update({f"encoder.{k}": v for k, v in merged_state_dict(model.encoder).items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(target / VISION_WEIGHTS))
    return with_encoder


def load_vision(path: Path, vision: VisionConfig, llm: nn.Module, *, encoder_saved: bool) -> MultimodalLM:
    """Rebuild the multimodal model saved in ``path`` around an already loaded ``llm``."""
    spec = vision.model_copy(deep=True)
    spec.connector.weights = None
    if encoder_saved and spec.encoder.kind == "open_clip":
        spec.encoder.pretrained = None  # the weights are in vision.safetensors: nothing to fetch
    model = build_multimodal(spec, llm)
    state = load_file(str(path / VISION_WEIGHTS))
    for name in ("connector", "encoder"):
        part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
        if part:
            missing, unexpected = getattr(model, name).load_state_dict(part, strict=False)
            if missing or unexpected:
                raise ModelError(f"{path / VISION_WEIGHTS}: {name} weights do not fit "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model
