"""Hugging Face ``LlavaForConditionalGeneration`` checkpoints: start from one, load one, export to one.

**Reading.** A Llava checkpoint is three parts mmtune already has names for,
so a Llava directory is accepted wherever a part is loaded, and no new recipe
key is needed::

    model:
      name: path/to/llava            # the language model (+ tokenizer)
      media:
        image:
          encoder: {kind: hf, name: path/to/llava}              # the vision tower
          connector: {kind: mlp2x_gelu, weights: path/to/llava}  # the projector

Each part is read straight from the checkpoint's safetensors (transformers'
``key_mapping`` renames the part's keys; the other parts' keys are left
unread), so nothing is converted or copied on disk. The encoder's
``select_layer`` / ``select_feature`` must be the checkpoint's
(``vision_feature_layer`` / ``vision_feature_select_strategy``): the projector
was trained on those features. :func:`image_branch_of` writes that recipe
section for a checkpoint and :func:`load_llava` loads the whole model (what
``mmtune chat`` / ``load_for_inference`` do with a Llava directory). Only
local directories are recognised (a hub Llava: download it first).

**Exporting.** HF Llava is one fixed architecture: a transformers vision tower
(CLIP / SigLIP vision model) read at one hidden layer, a projector that is
always Linear -> activation -> Linear, and a causal LM. An mmtune model maps
onto it exactly only when it has one image branch whose encoder is an ``hf``
CLIP / SigLIP vision model and whose connector is ``mlp2x_gelu`` (no pieces);
anything else is refused with the reason, because a checkpoint that loads but
computes something else would be worse than none. The mapping (checked
against transformers' ``models/llava``):

- ``select_layer`` -> ``vision_feature_layer``; ``select_feature: patch`` on
  CLIP -> ``vision_feature_select_strategy: default`` (drops the CLS token),
  every other case -> ``full`` (SigLIP has no CLS token to drop);
- ``MLPProjector.layers.0 / .2`` -> ``multi_modal_projector.linear_1 /
  linear_2`` with ``projector_hidden_act: gelu`` (exact GELU, as ``nn.GELU()``)
  and ``multimodal_projector_bias: true``;
- LoRA anywhere is merged first; the LLM's base model -> ``language_model``,
  its ``lm_head`` -> ``lm_head``;
- the tokenizer gets ``<image>`` as a special token (``image_token_index``);
  if that grows the vocabulary, the new embedding rows are zero and the token
  is in ``generation_config.suppress_tokens`` so it is never generated;
- the processor is ``LlavaProcessor`` around ``LlavaImageProcessorPil``
  configured like mmtune's :class:`~mmtune.modalities.image.ImageTransform`
  (see :func:`image_processor_for`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from mmtune.config.media import ConnectorConfig, EncoderConfig
from mmtune.config.schema import ModelConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.interop.hf_common import (
    add_media_token, assign_weights, checkpoint_image_processor, image_processor_kwargs, image_processor_settings,
    load_part, save_export,
)
from mmtune.modalities.image import IMAGE, IMAGE_TAG, ImageBranchConfig, ImageTransform
from mmtune.models.loading import causal_lm_kwargs, load_tokenizer
from mmtune.models.multimodal.build import attach_branches, build_branch, merged_state_dict
from mmtune.models.multimodal.connectors import MLPProjector
from mmtune.models.multimodal.encoders import HFVisionEncoder, MediaEncoder, OpenClipEncoder, hf_vision_encoder
from mmtune.models.multimodal.model import MultimodalLM

log = logging.getLogger(__name__)
LLAVA_MODEL_TYPE = "llava"
HF_VISION_TYPES = ("clip_vision_model", "siglip_vision_model")
# Checkpoint key prefixes of each part: transformers >= 5 writes the legacy layout
# (``language_model.model.*``); checkpoints saved by 4.5x use ``model.language_model.*``.
_LANGUAGE = (r"^language_model\.model\.", r"^model\.language_model\.")
_LM_HEAD = r"^language_model\.lm_head\."
_VISION = r"^(model\.)?vision_tower\."
_PROJECTOR = re.compile(r"^(?:model\.)?multi_modal_projector\.linear_([12])\.(weight|bias)$")
# HF Llava's projector is linear_1, GELU, linear_2; mmtune's MLPProjector(depth=2) is layers.0, .1 (GELU), .2.
_PROJECTOR_TO_MLP = {"1": "layers.0", "2": "layers.2"}


# --------------------------------------------------------------------------- reading

def llava_config(source: str | Path):
    """The ``LlavaConfig`` of a local Llava checkpoint directory, else None."""
    path = Path(source).expanduser()
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        return None
    if model_type != LLAVA_MODEL_TYPE:
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path))


def load_language_model(source: str, config, **kwargs) -> torch.nn.Module:
    """The checkpoint's language model + ``lm_head`` as a plain transformers causal LM."""
    from transformers import AutoModelForCausalLM

    text_config = config.get_text_config()
    model_class = AutoModelForCausalLM._model_mapping[type(text_config)]
    prefix = model_class.base_model_prefix
    key_mapping = {**{p: f"{prefix}." for p in _LANGUAGE}, _LM_HEAD: "lm_head."}
    return load_part(model_class, source, text_config, key_mapping, "language model", checkpoint="Llava checkpoint",
                     **kwargs)


def load_vision_tower(source: str, config) -> torch.nn.Module:
    """The checkpoint's vision tower as a transformers ``CLIPVisionModel`` / ``SiglipVisionModel``."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(config.vision_config)]
    return load_part(model_class, source, config.vision_config, {_VISION: ""}, "vision tower",
                     checkpoint="Llava checkpoint")


def projector_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The projector's weights in :class:`~mmtune.models.multimodal.connectors.MLPProjector` (depth 2) names."""
    from safetensors import safe_open

    path = Path(source).expanduser()
    config = llava_config(path)
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise ConfigError(f"model.media.image.connector.weights: {path} has a projector with "
                          f"{config.projector_hidden_act} activation and bias={config.multimodal_projector_bias}; "
                          "mmtune's mlp2x_gelu is Linear (with bias), exact GELU, Linear (with bias)")
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():
                if match := _PROJECTOR.match(key):
                    state[f"{_PROJECTOR_TO_MLP[match.group(1)]}.{match.group(2)}"] = fh.get_tensor(key)
    if not state:
        raise ConfigError(f"model.media.image.connector.weights: {path} is a Llava checkpoint without "
                          "multi_modal_projector weights")
    return state


def feature_choice(config) -> tuple[int, str]:
    """(select_layer, select_feature) equal to the checkpoint's vision feature settings."""
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise ModelError(f"Llava vision_feature_layer {layer}: several layers concatenated have no mmtune "
                         "encoder equivalent (one select_layer)")
    vision = config.vision_config
    has_cls = vision.model_type == "clip_vision_model"
    if config.vision_feature_select_strategy == "default":
        if not has_cls:
            raise ModelError(f"Llava vision_feature_select_strategy 'default' drops the first token of a "
                             f"{vision.model_type}, which has no CLS token; mmtune has no equivalent")
        return layer, "patch"
    return layer, "cls_patch" if has_cls else "patch"


def check_encoder_matches(cfg: EncoderConfig, config) -> None:
    """The recipe's feature choice must be the one the checkpoint's projector was trained on."""
    layer, feature = feature_choice(config)
    if (cfg.select_layer, cfg.select_feature) != (layer, feature):
        raise ConfigError(f"model.media.image.encoder: {cfg.name} is a Llava checkpoint trained on "
                          f"select_layer {layer}, select_feature {feature}; the recipe says "
                          f"{cfg.select_layer}, {cfg.select_feature}. Set those values")


def image_preprocess_of(source: str | Path) -> str:
    """mmtune's preprocessing mode equivalent to the checkpoint's image processor settings."""
    settings = image_processor_settings(source)
    if settings is None:
        return "resize"
    if settings.get("do_pad"):
        return "pad"
    if settings.get("do_center_crop"):
        return "center_crop"
    return "resize"


def image_branch_of(source: str | Path) -> ImageBranchConfig:
    """The ``model.media.image`` recipe section that loads this Llava checkpoint's encoder and projector."""
    config = llava_config(source)
    if config is None:
        raise ModelError(f"{source}: not a Llava checkpoint directory (config.json model_type must be 'llava')")
    layer, feature = feature_choice(config)
    return ImageBranchConfig(
        encoder=EncoderConfig(kind="hf", name=str(source), pretrained=None, select_layer=layer, select_feature=feature),
        connector=ConnectorConfig(kind="mlp2x_gelu", weights=str(source)),
        image_preprocess=image_preprocess_of(source),
    )


def load_llava(source: str | Path, *, device_type: str = "cpu", dtype: str = "auto"):
    """(MultimodalLM, tokenizer) from a Llava checkpoint, built from its parts as a recipe would."""
    cfg = ModelConfig(name=str(source), dtype=dtype)
    llm = load_language_model(str(source), llava_config(source), **causal_lm_kwargs(cfg, device_type=device_type))
    branch_cfg = image_branch_of(source)
    branch = build_branch(IMAGE.name, branch_cfg, llm.config.get_text_config().hidden_size,
                          encoder=LLAVA.image_encoder(branch_cfg.encoder, "model.media.image.encoder"),
                          connector_state=projector_state(source))
    return attach_branches(llm, {IMAGE.name: branch}).eval(), load_tokenizer(cfg)


class LlavaReader:
    """The parts of a Llava checkpoint directory, for ``mmtune.models.open``."""

    def recognises(self, source: str | Path) -> bool:
        return llava_config(source) is not None

    def language_model(self, source: str, **load_kwargs) -> nn.Module:
        return load_language_model(source, llava_config(source), **load_kwargs)

    def image_encoder(self, cfg: EncoderConfig, key: str) -> MediaEncoder:
        if cfg.kind != "hf":
            raise ConfigError(f"{key}.kind: {cfg.name} is a Llava checkpoint; its vision tower loads with kind: hf")
        config = llava_config(cfg.name)
        check_encoder_matches(cfg, config)
        processor = checkpoint_image_processor(cfg.name)  # its normalisation, when the checkpoint has a processor
        return hf_vision_encoder(load_vision_tower(cfg.name, config), cfg, processor=processor, key=key)

    def connector_state(self, source: str | Path, modality: str) -> dict[str, torch.Tensor]:
        if modality != IMAGE.name:
            raise ConfigError(f"model.media.{modality}.connector.weights: a Llava checkpoint has an image "
                              "projector only")
        return projector_state(source)

    def load(self, source: str | Path, *, device_type: str = "cpu", dtype: str = "auto"):
        return load_llava(source, device_type=device_type, dtype=dtype)


LLAVA = LlavaReader()


# --------------------------------------------------------------------------- exporting


def check_exportable(model: nn.Module) -> None:
    """Raise :class:`ModelError` saying why ``model`` has no exact HF Llava equivalent."""
    if not isinstance(model, MultimodalLM):
        raise ModelError("export --format hf-llava: this is a text-only model; export it with --format hf")
    if set(model.branches) != {IMAGE.name}:
        raise ModelError(f"export --format hf-llava: HF Llava has one image branch; this model has {sorted(model.branches)}")
    branch = model.branches[IMAGE.name]
    if len(branch.pieces):
        raise ModelError(f"export --format hf-llava: the image branch has pieces {list(branch.pieces)}; HF Llava has "
                         "none between its vision tower and projector")
    encoder, connector = branch.encoder, branch.connector
    if not isinstance(encoder, HFVisionEncoder):
        if isinstance(encoder, OpenClipEncoder):
            why = "an open_clip encoder has no transformers equivalent (HF Llava's vision tower is a transformers model)"
        else:
            why = f"the custom encoder {type(encoder).__name__} has no transformers equivalent"
        raise ModelError(f"export --format hf-llava: {why}; use model.media.image.encoder.kind: hf with a CLIP or "
                         "SigLIP vision model")
    if encoder.model.config.model_type not in HF_VISION_TYPES:
        raise ModelError(f"export --format hf-llava: vision model type {encoder.model.config.model_type} is not "
                         f"one of {', '.join(HF_VISION_TYPES)}")
    if not isinstance(connector, MLPProjector):
        raise ModelError(f"export --format hf-llava: the custom connector {type(connector).__name__} has no HF "
                         "Llava equivalent (its projector is always Linear, GELU, Linear)")
    if connector.depth != 2:
        kind = "linear" if connector.depth == 1 else f"mlp{connector.depth}x_gelu"
        raise ModelError(f"export --format hf-llava: connector {kind}: HF Llava's projector is always a 2-layer "
                         "MLP (mlp2x_gelu)")
    if encoder.num_prefix > 1:
        raise ModelError(f"export --format hf-llava: the vision model has {encoder.num_prefix} prefix tokens; "
                         "HF Llava drops at most one")
    llm = model.language_model
    if not hasattr(llm, "lm_head") or llm.get_output_embeddings() is not llm.lm_head:
        raise ModelError("export --format hf-llava: the language model has no lm_head output layer")


def select_strategy(encoder: HFVisionEncoder) -> str:
    """``default`` drops exactly the first token, which is mmtune's ``patch`` on a CLS model."""
    return "default" if encoder.num_prefix == 1 and not encoder.keep_cls else "full"


def llava_state_dict(model: MultimodalLM) -> dict[str, torch.Tensor]:
    """mmtune's parameters under ``LlavaForConditionalGeneration``'s module names (LoRA merged)."""
    llm = model.language_model
    prefix = llm.base_model_prefix
    state = {}
    for key, value in merged_state_dict(llm).items():
        if key.startswith(f"{prefix}."):
            state[f"model.language_model.{key.removeprefix(prefix + '.')}"] = value
        elif key.startswith("lm_head."):
            state[key] = value
        else:
            raise ModelError(f"export --format hf-llava: language model parameter {key} is neither in its "
                             f"base model '{prefix}' nor in lm_head")
    branch = model.branches[IMAGE.name]
    for key, value in merged_state_dict(branch.encoder.model).items():
        state[f"model.vision_tower.{key}"] = value
    projector = merged_state_dict(branch.connector)
    for ours, theirs in (("layers.0", "linear_1"), ("layers.2", "linear_2")):
        for kind in ("weight", "bias"):
            state[f"model.multi_modal_projector.{theirs}.{kind}"] = projector[f"{ours}.{kind}"]
    return state


def image_processor_for(transform: ImageTransform):
    """A ``LlavaImageProcessorPil`` doing what ``transform`` does (see the module docstring)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    square, common = image_processor_kwargs(transform)
    if transform.mode == "pad":
        return LlavaImageProcessorPil(do_pad=True, size=square, do_center_crop=False, crop_size=square, **common)
    if transform.mode == "resize":
        return LlavaImageProcessorPil(do_pad=False, size=square, do_center_crop=False, crop_size=square, **common)
    return LlavaImageProcessorPil(do_pad=False, size={"shortest_edge": transform.size}, do_center_crop=True,
                                  crop_size=square, **common)


def llava_config_for(model: MultimodalLM, token_id: int):
    from transformers import LlavaConfig

    branch = model.branches[IMAGE.name]
    encoder: HFVisionEncoder = branch.encoder
    llm = model.language_model
    text_config = llm.config.get_text_config()
    return LlavaConfig(
        vision_config=encoder.model.config.to_dict(), text_config=text_config.to_dict(),
        image_token_index=token_id, image_seq_length=branch.num_tokens,
        projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=encoder.select_layer, vision_feature_select_strategy=select_strategy(encoder),
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


@torch.no_grad()
def export_llava(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """Write ``out_dir``: LlavaForConditionalGeneration weights, config, processor and tokenizer.

    ``model`` is loaded with any adapter merged (``load_for_inference(..., merge=True)``).
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    check_exportable(model)
    llm = model.language_model
    if hasattr(model.llm, "peft_config"):
        raise ModelError("export --format hf-llava: the LLM's adapter could not be merged")
    branch = model.branches[IMAGE.name]
    token_id = add_media_token(tokenizer, llm, "hf-llava")
    config = llava_config_for(model, token_id)
    config.dtype = next(llm.parameters()).dtype
    hf_model = assign_weights(LlavaForConditionalGeneration, config, llava_state_dict(model), lm_head="lm_head.weight",
                              tied=config.tie_word_embeddings, fmt="hf-llava")
    if config.tie_word_embeddings:
        hf_model.lm_head.weight = hf_model.model.language_model.get_input_embeddings().weight
    hf_model.generation_config = llm.generation_config
    encoder: HFVisionEncoder = branch.encoder
    processor = LlavaProcessor(
        image_processor=image_processor_for(branch.transform), tokenizer=tokenizer,
        patch_size=encoder.model.config.patch_size, vision_feature_select_strategy=select_strategy(encoder),
        num_additional_image_tokens=encoder.num_prefix, chat_template=tokenizer.chat_template,
        image_token=IMAGE_TAG,
    )
    out_dir = save_export(out_dir, hf_model, processor, tokenizer)
    log.info("exported LlavaForConditionalGeneration to %s (image token %d, %d tokens per image)",
             out_dir, token_id, branch.num_tokens)
    return out_dir
