"""Start mmtune from a transformers ``LlavaForConditionalGeneration`` checkpoint directory.

A Llava checkpoint is three parts mmtune already has names for, so a Llava
directory is accepted wherever a part is loaded, and no new recipe key is
needed::

    model:
      name: path/to/llava            # the language model (+ tokenizer)
      vision:
        encoder: {kind: hf, name: path/to/llava}              # the vision tower
        connector: {kind: mlp2x_gelu, weights: path/to/llava}  # the projector

Each part is read straight from the checkpoint's safetensors (transformers'
``key_mapping`` renames the part's keys; the other parts' keys are left
unread), so nothing is converted or copied on disk. The encoder's
``select_layer`` / ``select_feature`` must be the checkpoint's
(``vision_feature_layer`` / ``vision_feature_select_strategy``): the projector
was trained on those features. :func:`vision_config_of` writes that recipe
section for a checkpoint and :func:`load_llava` loads the whole model (used by
``mmtune chat`` / ``load_for_inference`` on a Llava directory).

Only local directories are recognised (a hub Llava: download it first).
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import torch

from mmtune.config.schema import ConnectorConfig, EncoderConfig, ModelConfig, VisionConfig
from mmtune.errors import ConfigError, ModelError

LLAVA_MODEL_TYPE = "llava"
# Checkpoint key prefixes of each part: transformers >= 5 writes the legacy layout
# (``language_model.model.*``); checkpoints saved by 4.5x use ``model.language_model.*``.
_LANGUAGE = (r"^language_model\.model\.", r"^model\.language_model\.")
_LM_HEAD = r"^language_model\.lm_head\."
_VISION = r"^(model\.)?vision_tower\."
_PROJECTOR = re.compile(r"^(?:model\.)?multi_modal_projector\.linear_([12])\.(weight|bias)$")
# HF Llava's projector is linear_1, GELU, linear_2; mmtune's MLPProjector(depth=2) is layers.0, .1 (GELU), .2.
_PROJECTOR_TO_MLP = {"1": "layers.0", "2": "layers.2"}


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


@contextlib.contextmanager
def _quiet_transformers():
    """Loading one part reports the other parts' keys as unexpected: expected here, so not shown."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _check_loaded(info: dict, what: str, source) -> None:
    missing = [k for k in info.get("missing_keys", ()) if k]
    if missing:
        raise ModelError(f"{source}: the Llava checkpoint lacks {what} weights ({len(missing)} missing, "
                         f"e.g. {sorted(missing)[:3]})")


def load_language_model(source: str, config, **kwargs) -> torch.nn.Module:
    """The checkpoint's language model + ``lm_head`` as a plain transformers causal LM."""
    from transformers import AutoModelForCausalLM

    text_config = config.get_text_config()
    model_class = AutoModelForCausalLM._model_mapping[type(text_config)]
    prefix = model_class.base_model_prefix
    key_mapping = {**{p: f"{prefix}." for p in _LANGUAGE}, _LM_HEAD: "lm_head."}
    with _quiet_transformers():
        model, info = model_class.from_pretrained(source, config=text_config, key_mapping=key_mapping,
                                                  output_loading_info=True, **kwargs)
    _check_loaded(info, "language model", source)
    return model


def load_vision_tower(source: str, config) -> torch.nn.Module:
    """The checkpoint's vision tower as a transformers ``CLIPVisionModel`` / ``SiglipVisionModel``."""
    from transformers import AutoModel

    model_class = AutoModel._model_mapping[type(config.vision_config)]
    with _quiet_transformers():
        model, info = model_class.from_pretrained(source, config=config.vision_config, key_mapping={_VISION: ""},
                                                  output_loading_info=True)
    _check_loaded(info, "vision tower", source)
    return model


def projector_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The projector's weights in :class:`~mmtune.vision.connectors.MLPProjector` (depth 2) names."""
    from safetensors import safe_open

    path = Path(source).expanduser()
    config = llava_config(path)
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise ConfigError(f"model.vision.connector.weights: {path} has a projector with "
                          f"{config.projector_hidden_act} activation and bias={config.multimodal_projector_bias}; "
                          "mmtune's mlp2x_gelu is Linear (with bias), exact GELU, Linear (with bias)")
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():
                if match := _PROJECTOR.match(key):
                    state[f"{_PROJECTOR_TO_MLP[match.group(1)]}.{match.group(2)}"] = fh.get_tensor(key)
    if not state:
        raise ConfigError(f"model.vision.connector.weights: {path} is a Llava checkpoint without "
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
        raise ConfigError(f"model.vision.encoder: {cfg.name} is a Llava checkpoint trained on "
                          f"select_layer {layer}, select_feature {feature}; the recipe says "
                          f"{cfg.select_layer}, {cfg.select_feature}. Set those values")


def image_preprocess_of(source: str | Path) -> str:
    """mmtune's preprocessing mode equivalent to the checkpoint's image processor settings."""
    path = Path(source).expanduser()
    # transformers 5 nests the image processor in processor_config.json; older checkpoints
    # (e.g. llava-hf/llava-1.5-7b-hf) have a preprocessor_config.json.
    if (path / "processor_config.json").is_file():
        settings = json.loads((path / "processor_config.json").read_text()).get("image_processor", {})
    elif (path / "preprocessor_config.json").is_file():
        settings = json.loads((path / "preprocessor_config.json").read_text())
    else:
        return "resize"
    if settings.get("do_pad"):
        return "pad"
    if settings.get("do_center_crop"):
        return "center_crop"
    return "resize"


def vision_config_of(source: str | Path) -> VisionConfig:
    """The ``model.vision`` recipe section that loads this Llava checkpoint's encoder and projector."""
    config = llava_config(source)
    if config is None:
        raise ModelError(f"{source}: not a Llava checkpoint directory (config.json model_type must be 'llava')")
    layer, feature = feature_choice(config)
    return VisionConfig(
        encoder=EncoderConfig(kind="hf", name=str(source), pretrained=None, select_layer=layer, select_feature=feature),
        connector=ConnectorConfig(kind="mlp2x_gelu", weights=str(source)),
        image_preprocess=image_preprocess_of(source),
    )


def load_llava(source: str | Path, *, device_type: str = "cpu", dtype: str = "auto"):
    """(MultimodalLM, tokenizer) from a Llava checkpoint, through the same loaders a recipe uses."""
    from mmtune.models.loading import load_causal_lm, load_tokenizer
    from mmtune.vision.build import build_multimodal

    cfg = ModelConfig(name=str(source), dtype=dtype, vision=vision_config_of(source))
    llm = load_causal_lm(cfg, device_type=device_type)
    return build_multimodal(cfg.vision, llm).eval(), load_tokenizer(cfg)
