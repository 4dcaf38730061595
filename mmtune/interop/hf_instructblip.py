"""Hugging Face ``InstructBlipForConditionalGeneration`` / ``Blip2ForConditionalGeneration``: start, load, export.

Both are one fixed architecture (transformers' ``models/instructblip`` and
``models/blip_2``): a ViT vision model (EVA ViT-g in the published
checkpoints), a Q-Former with ``num_query_tokens`` learned queries, a linear
``language_projection`` and a language model. The image's query outputs are
spliced in front of the prompt, at the positions of ``num_query_tokens``
``<image>`` tokens that come before everything else (BOS included). mmtune
has a name for each part: an ``hf`` encoder (transformers'
``InstructBlipVisionModel`` / ``Blip2VisionModel`` itself) and the ``qformer``
connector (:class:`~mmtune.models.multimodal.connectors.QFormerConnector`,
built on transformers' ``InstructBlipQFormerModel``, parameter names
``qformer.*``, ``query_tokens``, ``language_projection.*``).

**Reading.** A checkpoint directory is accepted wherever a part is loaded::

    model:
      name: path/to/instructblip          # the language model (+ tokenizer)
      media:
        image:
          encoder: {kind: hf, name: path/to/instructblip, select_layer: -1, select_feature: cls_patch}
          connector:
            kind: qformer
            weights: path/to/instructblip   # query tokens, Q-Former, projection
            options: {num_query_tokens: 32, tokenizer: path/to/instructblip/qformer_tokenizer,
                      qformer: {...the checkpoint's qformer_config...}}
          image_preprocess: resize

:func:`image_branch_of` writes that section from the checkpoint's config and
:func:`load_instructblip` loads the whole model (what ``mmtune chat`` and
``load_for_inference`` do with such a directory). Each part is read straight
from the checkpoint's safetensors, nothing is converted on disk:

- ``language_model.*`` -> the causal LM (its own key names below that prefix);
  only decoder-only language models (OPT, Llama / Vicuna ...): the Flan-T5
  checkpoints are refused, mmtune trains causal LMs;
- ``vision_model.*`` -> the vision model, read at its ``last_hidden_state``
  (``select_layer: -1``, ``select_feature: cls_patch``, and the encoder's
  ``ln_vision`` on: the vision model's ``post_layernorm`` is BLIP-2's
  ``ln_vision``), the features the Q-Former was trained on; another choice is
  refused;
- ``query_tokens``, ``qformer.*``, ``language_projection.*`` -> the
  connector, unrenamed for InstructBLIP (instruction-aware, its BERT tokenizer
  in ``qformer_tokenizer/``). BLIP-2's Q-Former reads no text
  (``instruction_aware: false``); its keys differ in one place:
  ``qformer.layernorm`` is InstructBLIP's ``qformer.embeddings.layernorm``, and
  the text-only feed-forwards (``intermediate`` / ``output``, present when
  ``use_qformer_text_input``) are dropped (queries never pass through them);
- the image processor (``BlipImageProcessor``: resize to a square, bicubic,
  CLIP mean / std) -> ``image_preprocess: resize`` (``center_crop`` when it
  crops), its mean / std -> the encoder's normalisation.

A checkpoint's tokenizer without a chat template gets the built-in
``instructblip`` template when the whole model is loaded (image tokens first,
then BOS if the tokenizer adds one, then the prompt), which is the layout
transformers' processor builds.

**Exporting.** An mmtune model maps onto ``InstructBlipForConditionalGeneration``
exactly only when it has one image branch, an instruction-aware ``qformer``
connector, a decoder-only causal LM with an ``lm_head``, and a vision side
transformers' vision model computes: its blocks, then one LayerNorm
(``post_layernorm``), the whole sequence, class token first. That is

- an ``hf`` InstructBLIP / BLIP-2 vision model read at its ``last_hidden_state``
  (as above), or read at its last layer without ``ln_vision`` and followed by
  one ``layer_norm`` piece (which becomes ``post_layernorm``); or
- an ``open_clip`` timm EVA01 trunk (EVA01-g-14's, the papers' encoder) at any
  ``select_layer`` with ``cls_patch``, followed by the ``ln_vision:
  {kind: layer_norm}`` piece: timm's EVA block is BLIP-2's, so its weights map
  onto the vision model's (see :func:`eva_vision_state`); the blocks after
  ``select_layer`` are pruned already, so the exported vision model has the
  blocks the encoder keeps (39 of EVA01-g-14's 40 at ``select_layer: -2``,
  as BLIP-2).

A BLIP-2-style Q-Former (``instruction_aware: false``) exports as
``Blip2ForConditionalGeneration`` (``--format hf-blip2``). Anything else
(other pieces, a CLIP / SigLIP tower, an MLP projector, another EVA: EVA02's
rotary embeddings or SwiGLU, LayerScale ...) is refused with the reason. The
mapping:

- LoRA anywhere is merged first; the causal LM's state dict -> ``language_model.*``;
  the vision model's -> ``vision_model.*`` (the two vision classes have the
  same layout, so either exports as either); the connector's state dict ->
  the same names (BLIP-2: ``qformer.embeddings.layernorm`` ->
  ``qformer.layernorm``); transformers has one ``layer_norm_eps`` for the
  vision model's norms, so a ``layer_norm`` piece of another epsilon (the
  piece's default 1e-5, as LAVIS's ``ln_vision``, against EVA's 1e-6) takes
  the blocks' one, as transformers' conversion of the LAVIS checkpoints
  does (logged);
- ``num_query_tokens``, the Q-Former's config (its ``vocab_size`` is its
  tokenizer's size), the vision config and the text config are copied;
- the LLM tokenizer gets ``<image>`` as a special token (``image_token_index``);
  when that grows the vocabulary the new embedding rows are zero and the token
  is in ``generation_config.suppress_tokens``, so mmtune never generates it.
  transformers' ``InstructBlipForConditionalGeneration.generate`` runs the
  language model's own generation config (rebuilt from the text config, which
  keeps no ``suppress_tokens``): pass
  ``suppress_tokens=model.generation_config.suppress_tokens`` to it;
- the processor is ``InstructBlipProcessor`` (``Blip2Processor``) around a
  ``BlipImageProcessorPil`` configured like mmtune's
  :class:`~mmtune.modalities.image.ImageTransform` (``resize``: size x size
  bicubic; ``center_crop``: shortest edge, then the centre; ``pad`` has no
  ``BlipImageProcessor`` equivalent and is refused), the LLM tokenizer and the
  Q-Former's tokenizer (``qformer_tokenizer/``).

With the ``instructblip`` chat template, ``processor(images=image,
text=instruction)`` gives the very ids, pixels and Q-Former ids mmtune's
pipeline gives for a one-image, one-turn prompt; the processor reads one
instruction per text (the Q-Former of a multi-turn conversation reads each
image's own turn in mmtune, the whole text in transformers).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
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
from mmtune.modalities.image import IMAGE, ImageBranchConfig, ImageTransform
from mmtune.models.loading import causal_lm_kwargs, load_tokenizer
from mmtune.models.multimodal.branch import LayerNormPiece, MediaBranch
from mmtune.models.multimodal.build import attach_branches, build_branch, merged_state_dict
from mmtune.models.multimodal.connectors import MLPProjector, QFormerConnector
from mmtune.models.multimodal.encoders import (
    BLIP_VISION_TYPES, HFVisionEncoder, MediaEncoder, OpenClipEncoder, hf_vision_class, hf_vision_encoder,
)
from mmtune.models.multimodal.model import MultimodalLM

log = logging.getLogger(__name__)

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"
"""Where transformers' processor saves (and loads) the Q-Former's tokenizer, inside the checkpoint directory."""
QFORMER_ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                     "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                     "layer_norm_eps", "cross_attention_frequency", "pad_token_id")
"""The Q-Former config keys a ``qformer`` connector's ``options.qformer`` carries (encoder width and vocabulary
size are set by mmtune)."""
VISION_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                    "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout", "initializer_range", "qkv_bias")
"""The vision config keys (the same in ``InstructBlipVisionConfig`` and ``Blip2VisionConfig``)."""
_BLIP2_TEXT_FFN = re.compile(r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.")
"""BLIP-2's text-only feed-forwards (``use_qformer_text_input``): queries never pass through them."""


@dataclass(frozen=True)
class Flavour:
    """What differs between the two checkpoint kinds."""

    model_type: str
    title: str
    export_format: str
    instruction_aware: bool

    def model_class(self):
        import transformers

        name = "InstructBlipForConditionalGeneration" if self.instruction_aware else "Blip2ForConditionalGeneration"
        return getattr(transformers, name)

    def config_classes(self):
        import transformers

        prefix = "InstructBlip" if self.instruction_aware else "Blip2"
        return tuple(getattr(transformers, f"{prefix}{part}Config") for part in ("", "Vision", "QFormer"))

    def to_checkpoint(self, key: str) -> str:
        """mmtune's connector key -> the checkpoint's."""
        if not self.instruction_aware and key.startswith("qformer.embeddings.layernorm."):
            return "qformer.layernorm." + key.removeprefix("qformer.embeddings.layernorm.")
        return key

    def from_checkpoint(self, key: str) -> str | None:
        """The checkpoint's connector key -> mmtune's (None: not a connector key, or one mmtune drops)."""
        if not (key == "query_tokens" or key.startswith(("qformer.", "language_projection."))):
            return None
        if self.instruction_aware:
            return key
        if _BLIP2_TEXT_FFN.match(key):
            return None
        if key.startswith("qformer.layernorm."):
            return "qformer.embeddings.layernorm." + key.removeprefix("qformer.layernorm.")
        return key


INSTRUCTBLIP = Flavour("instructblip", "InstructBLIP", "hf-instructblip", instruction_aware=True)
BLIP2 = Flavour("blip-2", "BLIP-2", "hf-blip2", instruction_aware=False)
FLAVOURS = {f.model_type: f for f in (INSTRUCTBLIP, BLIP2)}


# --------------------------------------------------------------------------- reading


def _model_type(source: str | Path) -> str | None:
    config_file = Path(source).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError, OSError):
        return None


def flavour_of(source: str | Path | None) -> Flavour | None:
    """The kind of a local InstructBLIP / BLIP-2 checkpoint directory, else None."""
    return None if source is None else FLAVOURS.get(_model_type(source))


def blip_config(source: str | Path):
    """The checkpoint's ``InstructBlipConfig`` / ``Blip2Config``; a T5 language model is refused with the reason."""
    path = Path(source).expanduser()
    flavour = flavour_of(path)
    if flavour is None:
        raise ModelError(f"{source}: not an InstructBLIP or BLIP-2 checkpoint directory (config.json model_type "
                         f"must be {' or '.join(repr(t) for t in FLAVOURS)})")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(str(path))
    text = config.text_config
    if getattr(text, "is_encoder_decoder", False) or text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        kind = ("encoder-decoder (Flan-T5)" if getattr(text, "is_encoder_decoder", False)
                else "model that is not a transformers causal LM")
        raise ModelError(f"{source}: this {flavour.title} checkpoint's language model is a {text.model_type} "
                         f"{kind}; mmtune trains decoder-only causal LMs (the OPT or Vicuna checkpoints load)")
    return config


def load_language_model(source: str, config, **kwargs) -> nn.Module:
    """``language_model.*`` as a plain transformers causal LM (its keys below that prefix are the LM's own)."""
    from transformers import AutoModelForCausalLM

    model_class = AutoModelForCausalLM._model_mapping[type(config.text_config)]
    return load_part(model_class, source, config.text_config, {r"^language_model\.": ""}, "language model", **kwargs)


def load_vision_model(source: str, config) -> nn.Module:
    """``vision_model.*`` as transformers' ``InstructBlipVisionModel`` / ``Blip2VisionModel``."""
    model_class = hf_vision_class(config.vision_config.model_type)
    return load_part(model_class, source, config.vision_config, {r"^vision_model\.": ""}, "vision model")


def qformer_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The query tokens, Q-Former and projection in :class:`QFormerConnector` names (see the module docstring)."""
    from safetensors import safe_open

    path = Path(source).expanduser()
    flavour = flavour_of(path)
    if flavour is None:
        raise ConfigError(f"connector.weights: {path} is not an InstructBLIP or BLIP-2 checkpoint directory")
    state = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():
                if (ours := flavour.from_checkpoint(key)) is not None:
                    state[ours] = fh.get_tensor(key)
    if "query_tokens" not in state:
        raise ConfigError(f"connector.weights: {path} is a {flavour.title} checkpoint without query_tokens / "
                          "qformer weights")
    return state


def qformer_options(config) -> dict:
    """``options.qformer`` of a ``qformer`` connector with the checkpoint's Q-Former architecture."""
    return {key: getattr(config.qformer_config, key) for key in QFORMER_ARCH_KEYS}


def qformer_tokenizer_of(source: str | Path) -> str:
    """The Q-Former tokenizer saved with the checkpoint (``qformer_tokenizer/``); the published one otherwise."""
    folder = Path(source).expanduser() / QFORMER_TOKENIZER_DIR
    if folder.is_dir():
        return str(folder)
    log.warning("%s has no %s/; the Q-Former reads the instruction with bert-base-uncased", source,
                QFORMER_TOKENIZER_DIR)
    return "bert-base-uncased"


def image_preprocess_of(source: str | Path) -> str:
    """mmtune's preprocessing mode equivalent to the checkpoint's image processor settings."""
    settings = image_processor_settings(source)
    if settings is None:
        return "resize"
    return "center_crop" if settings.get("do_center_crop") else "resize"


def image_branch_of(source: str | Path) -> ImageBranchConfig:
    """The ``model.media.image`` recipe section that loads this checkpoint's vision model and Q-Former."""
    config = blip_config(source)
    flavour = flavour_of(source)
    options: dict = {"num_query_tokens": config.num_query_tokens, "instruction_aware": flavour.instruction_aware,
                     "qformer": qformer_options(config)}
    if flavour.instruction_aware:
        options["tokenizer"] = qformer_tokenizer_of(source)
    return ImageBranchConfig(
        encoder=EncoderConfig(kind="hf", name=str(source), pretrained=None, select_layer=-1,
                              select_feature="cls_patch"),
        connector=ConnectorConfig(kind="qformer", weights=str(source), options=options),
        image_preprocess=image_preprocess_of(source),
    )


def check_encoder_matches(cfg: EncoderConfig, config, title: str) -> None:
    """The Q-Former was trained on the vision model's ``last_hidden_state``: the recipe must read that."""
    layers = config.vision_config.num_hidden_layers
    if cfg.select_layer not in (-1, layers) or cfg.select_feature != "cls_patch" or cfg.ln_vision is False:
        raise ConfigError(f"model.media.image.encoder: {cfg.name} is a {title} checkpoint whose Q-Former reads the "
                          "vision model's last_hidden_state (select_layer -1, select_feature cls_patch, ln_vision "
                          f"on); the recipe says select_layer {cfg.select_layer}, select_feature "
                          f"{cfg.select_feature}, ln_vision {cfg.ln_vision}")


def _install_default_template(tokenizer) -> None:
    from mmtune.data.templates import BUILTIN_TEMPLATES

    if not tokenizer.chat_template:
        tokenizer.chat_template = BUILTIN_TEMPLATES["instructblip"]


def load_instructblip(source: str | Path, *, device_type: str = "cpu", dtype: str = "auto"):
    """(MultimodalLM, tokenizer) from an InstructBLIP / BLIP-2 checkpoint, built from its parts as a recipe would."""
    config = blip_config(source)
    cfg = ModelConfig(name=str(source), dtype=dtype)
    llm = load_language_model(str(source), config, **causal_lm_kwargs(cfg, device_type=device_type))
    branch_cfg = image_branch_of(source)
    branch = build_branch(IMAGE.name, branch_cfg, llm.config.get_text_config().hidden_size,
                          encoder=BLIP_READER.image_encoder(branch_cfg.encoder, "model.media.image.encoder"),
                          connector_state=qformer_state(source))
    tokenizer = load_tokenizer(cfg)
    _install_default_template(tokenizer)
    return attach_branches(llm, {IMAGE.name: branch}).eval(), tokenizer


class InstructBlipReader:
    """The parts of an InstructBLIP or BLIP-2 checkpoint directory, for ``mmtune.models.open``."""

    def recognises(self, source: str | Path) -> bool:
        return flavour_of(source) is not None

    def language_model(self, source: str, **load_kwargs) -> nn.Module:
        return load_language_model(source, blip_config(source), **load_kwargs)

    def image_encoder(self, cfg: EncoderConfig, key: str) -> MediaEncoder:
        title = flavour_of(cfg.name).title
        if cfg.kind != "hf":
            raise ConfigError(f"{key}.kind: {cfg.name} is a {title} checkpoint; its vision model loads with kind: hf")
        config = blip_config(cfg.name)
        check_encoder_matches(cfg, config, title)
        processor = checkpoint_image_processor(cfg.name)  # its normalisation, when the checkpoint has a processor
        return hf_vision_encoder(load_vision_model(cfg.name, config), cfg, processor=processor, key=key)

    def connector_state(self, source: str | Path, modality: str) -> dict[str, torch.Tensor]:
        if modality != IMAGE.name:
            raise ConfigError(f"model.media.{modality}.connector.weights: an InstructBLIP / BLIP-2 checkpoint has "
                              "an image Q-Former only")
        return qformer_state(source)

    def load(self, source: str | Path, *, device_type: str = "cpu", dtype: str = "auto"):
        return load_instructblip(source, device_type=device_type, dtype=dtype)


BLIP_READER = InstructBlipReader()


# --------------------------------------------------------------------------- exporting


def eva_layout_problem(encoder: OpenClipEncoder) -> str | None:
    """Why this open_clip encoder is not BLIP-2's EVA ViT layout (None: it is; see :func:`eva_vision_state`)."""
    trunk = getattr(encoder.visual, "trunk", None)
    try:
        from timm.layers import Mlp
        from timm.models.eva import Eva, EvaAttention, EvaBlock
    except ImportError:  # pragma: no cover - open_clip's timm towers need timm
        return "needs timm to be read"
    if not isinstance(trunk, Eva):
        return "is open_clip's own ViT" if trunk is None else f"is a timm {type(trunk).__name__}, not an EVA"
    if trunk.rope is not None:
        return "has rotary position embeddings (EVA02)"
    if trunk.cls_token is None or trunk.reg_token is not None or trunk.no_embed_class or trunk.pos_embed is None:
        return "has no class token, has register tokens, or position-embeds differently"
    if not isinstance(trunk.norm_pre, nn.Identity) or getattr(trunk, "dynamic_img_size", False):
        return "has a pre-transformer norm or a dynamic image size"
    patch = trunk.patch_embed
    if (len(set(patch.img_size)) != 1 or len(set(patch.patch_size)) != 1 or patch.proj.bias is None
            or not isinstance(patch.norm, nn.Identity)):
        return "has a non-square or normalised patch embedding"
    norms = [n for block in trunk.blocks for n in (block.norm1, block.norm2)]
    if (not all(isinstance(n, nn.LayerNorm) and n.weight is not None and n.bias is not None for n in norms)
            or len({n.eps for n in norms}) != 1):
        return "has block norms other than LayerNorms (with weight and bias) of one epsilon"
    for i, block in enumerate(trunk.blocks):
        attn, mlp = block.attn, block.mlp
        if type(block) is not EvaBlock or not isinstance(attn, EvaAttention):
            return f"block {i} is a {type(block).__name__} (post-norm or rope attention)"
        if block.gamma_1 is not None or block.gamma_2 is not None:
            return f"block {i} has LayerScale"
        if (attn.qkv is None or not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.norm, nn.Identity)
                or getattr(attn, "gate", None) is not None or attn.head_dim * attn.num_heads != trunk.embed_dim):
            return f"block {i}'s attention has separate q/k/v, a q/k or inner norm, a gate or another head width"
        if (type(mlp) is not Mlp or not isinstance(mlp.norm, nn.Identity) or type(mlp.act) is not nn.GELU
                or mlp.act.approximate != "none" or mlp.fc1.bias is None or mlp.fc2.bias is None):
            return f"block {i}'s MLP is not Linear, exact GELU, Linear (SwiGLU or a scaled MLP: EVA02)"
    return None


def eva_vision_config(encoder: OpenClipEncoder) -> dict:
    """The ``InstructBlipVisionConfig`` keys of the (pruned) EVA trunk: its blocks up to ``select_layer``."""
    trunk = encoder.visual.trunk
    first = trunk.blocks[0]
    return {"hidden_size": trunk.embed_dim, "intermediate_size": first.mlp.fc1.out_features,
            "num_hidden_layers": len(trunk.blocks), "num_attention_heads": first.attn.num_heads,
            "image_size": trunk.patch_embed.img_size[0], "patch_size": trunk.patch_embed.patch_size[0],
            "hidden_act": "gelu", "layer_norm_eps": first.norm1.eps, "attention_dropout": 0.0,
            "initializer_range": 0.02, "qkv_bias": first.attn.q_bias is not None}


def eva_vision_state(encoder: OpenClipEncoder) -> dict[str, torch.Tensor]:
    """The EVA trunk (LoRA merged) under ``InstructBlipVisionModel`` names (``post_layernorm``: see
    :func:`vision_state`).

    timm's EVA block is BLIP-2's (LAVIS ``eva_vit``): ``cls_token`` / ``pos_embed`` / ``patch_embed.proj`` ->
    ``embeddings.class_embedding`` / ``position_embedding`` / ``patch_embedding``; per block ``norm1`` / ``norm2``
    -> ``layer_norm1`` / ``layer_norm2``, ``attn.qkv`` (bias: ``q_bias``, zero ``k_bias``, ``v_bias``
    concatenated, as transformers' BLIP-2 conversion does) -> ``self_attn.qkv``, ``attn.proj`` ->
    ``self_attn.projection``, ``mlp.fc1`` / ``fc2`` -> ``mlp.fc1`` / ``fc2``.
    """
    raw = merged_state_dict(encoder)
    trunk = encoder.visual.trunk
    state = {"embeddings.class_embedding": raw["visual.trunk.cls_token"],
             "embeddings.position_embedding": raw["visual.trunk.pos_embed"],
             "embeddings.patch_embedding.weight": raw["visual.trunk.patch_embed.proj.weight"],
             "embeddings.patch_embedding.bias": raw["visual.trunk.patch_embed.proj.bias"]}
    names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
             "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i, block in enumerate(trunk.blocks):
        ours, theirs = f"visual.trunk.blocks.{i}.", f"encoder.layers.{i}."
        for src, dst in names.items():
            for kind in ("weight", "bias"):
                if f"{ours}{src}.{kind}" in raw:
                    state[f"{theirs}{dst}.{kind}"] = raw[f"{ours}{src}.{kind}"]
        if block.attn.q_bias is not None:
            state[f"{theirs}self_attn.qkv.bias"] = torch.cat([raw[f"{ours}attn.q_bias"],
                                                              block.attn.k_bias.detach().to(raw[f"{ours}attn.q_bias"]),
                                                              raw[f"{ours}attn.v_bias"]])
    return state


def ln_vision_piece(branch: MediaBranch) -> LayerNormPiece | None:
    """The branch's one ``layer_norm`` piece (BLIP-2's ``ln_vision`` after an encoder without its own), if any."""
    pieces = list(branch.pieces.values())
    return pieces[0] if len(pieces) == 1 and isinstance(pieces[0], LayerNormPiece) else None


def vision_config(branch: MediaBranch) -> dict:
    """``InstructBlipVisionConfig`` / ``Blip2VisionConfig`` keys of the branch's encoder."""
    encoder = branch.encoder
    if isinstance(encoder, OpenClipEncoder):
        return eva_vision_config(encoder)
    return {key: getattr(encoder.model.config, key) for key in VISION_ARCH_KEYS}


def vision_state(branch: MediaBranch) -> dict[str, torch.Tensor]:
    """The vision model's state dict: the encoder's (LoRA merged), its ``post_layernorm`` the ``ln_vision``
    piece's when the branch has one (transformers' vision model always ends in ``post_layernorm``, whose
    epsilon is the blocks' one: a piece of another epsilon is logged, its outputs move by about
    ``eps_difference / (2 * feature variance)`` relatively, negligible on a trained ViT's features)."""
    encoder = branch.encoder
    state = eva_vision_state(encoder) if isinstance(encoder, OpenClipEncoder) else merged_state_dict(encoder.model)
    piece = ln_vision_piece(branch)
    if piece is not None:
        eps = vision_config(branch)["layer_norm_eps"]
        if piece.norm.eps != eps:
            log.warning("the ln_vision piece's epsilon %g becomes the vision model's layer_norm_eps %g (transformers "
                        "has one for all its norms)", piece.norm.eps, eps)
        state["post_layernorm.weight"] = piece.norm.weight.detach()
        state["post_layernorm.bias"] = piece.norm.bias.detach()
    return state


def check_exportable(model: nn.Module, flavour: Flavour = INSTRUCTBLIP) -> None:
    """Raise :class:`ModelError` saying why ``model`` has no exact equivalent in ``flavour``'s format."""
    fmt, title = f"export --format {flavour.export_format}", flavour.title
    if not isinstance(model, MultimodalLM):
        raise ModelError(f"{fmt}: this is a text-only model; export it with --format hf")
    if set(model.branches) != {IMAGE.name}:
        raise ModelError(f"{fmt}: {title} has one image branch; this model has {sorted(model.branches)}")
    branch = model.branches[IMAGE.name]
    norm = ln_vision_piece(branch)
    if len(branch.pieces) and norm is None:
        raise ModelError(f"{fmt}: the image branch has pieces {list(branch.pieces)}; between its vision model and "
                         f"Q-Former {title} has only ln_vision (one layer_norm piece)")
    connector = branch.connector
    if isinstance(connector, MLPProjector):
        raise ModelError(f"{fmt}: the connector is a {'linear' if connector.depth == 1 else 'MLP'} projector, not "
                         f"{title}'s Q-Former; a projector model exports with --format hf-llava")
    if not isinstance(connector, QFormerConnector):
        raise ModelError(f"{fmt}: the connector {type(connector).__name__} has no {title} equivalent (its "
                         "connector is a Q-Former: connector kind qformer)")
    if connector.instruction_aware != flavour.instruction_aware:
        if connector.instruction_aware:
            raise ModelError(f"{fmt}: the Q-Former reads the instruction (instruction_aware); BLIP-2's reads no "
                             "text: export it with --format hf-instructblip")
        raise ModelError(f"{fmt}: the Q-Former is BLIP-2's (instruction_aware: false), InstructBLIP's reads the "
                         "instruction: export it with --format hf-blip2")
    vision_class = f"{'InstructBlip' if flavour.instruction_aware else 'Blip2'}VisionModel"
    check_vision_side(branch, fmt, title, vision_class)
    check_language_model(model, fmt)


def check_vision_side(branch: MediaBranch, fmt: str, title: str, vision_class: str, *,
                      transform: ImageTransform | None = None, processor: str = "BlipImageProcessor") -> None:
    """Raise :class:`ModelError` unless the branch's encoder (with its ``ln_vision``) is a vision model
    ``vision_class`` computes and its preprocessing (``transform``: the branch's by default; a video branch's
    per-frame one) is one ``processor`` does (``fmt``: ``export --format NAME``)."""
    encoder, norm = branch.encoder, ln_vision_piece(branch)
    transform = transform if transform is not None else branch.transform
    if isinstance(encoder, OpenClipEncoder):
        problem = eva_layout_problem(encoder)
        if problem is not None:
            raise ModelError(f"{fmt}: the open_clip encoder {problem}, so it has no mapping onto transformers' "
                             f"{vision_class} (only a timm EVA01 trunk, EVA01-g-14's, maps); use encoder kind: hf "
                             "with an InstructBLIP or BLIP-2 vision model")
        if not encoder.keep_cls or norm is None:
            raise ModelError(f"{fmt}: {title}'s Q-Former reads the EVA features with the class token, through "
                             "ln_vision (the vision model's post_layernorm); this branch has select_feature "
                             f"{'cls_patch' if encoder.keep_cls else 'patch'} and "
                             f"{'a' if norm is not None else 'no'} ln_vision piece (pieces: {{ln_vision: "
                             "{kind: layer_norm}})")
    elif not isinstance(encoder, HFVisionEncoder):
        raise ModelError(f"{fmt}: the custom encoder {type(encoder).__name__} has no transformers equivalent; use "
                         "encoder kind: hf with an InstructBLIP or BLIP-2 vision model")
    else:
        vision_type = encoder.model.config.model_type
        if vision_type not in BLIP_VISION_TYPES:
            raise ModelError(f"{fmt}: the vision model is a {vision_type}; {title}'s is an InstructBLIP / BLIP-2 "
                             "vision model (a CLIP or SigLIP tower with a projector exports with --format hf-llava)")
        layers = encoder.model.config.num_hidden_layers
        normed = encoder.ln_vision != (norm is not None)  # one final norm: post_layernorm, or a piece in its place
        if encoder.select_layer not in (-1, layers) or not encoder.keep_cls or not normed:
            raise ModelError(f"{fmt}: {title}'s Q-Former reads the vision model's last_hidden_state (select_layer "
                             f"-1, select_feature cls_patch, then one ln_vision); this branch reads select_layer "
                             f"{encoder.select_layer}, {'cls_patch' if encoder.keep_cls else 'patch'}, ln_vision "
                             f"{'on' if encoder.ln_vision else 'off'}"
                             f"{' and an ln_vision piece' if norm is not None else ''}")
    if transform.mode == "pad":
        raise ModelError(f"{fmt}: image_preprocess pad (LLaVA's pad to square) has no {processor} "
                         "equivalent; train with image_preprocess resize (InstructBLIP's) or center_crop")


def check_language_model(model: MultimodalLM, fmt: str) -> None:
    """Raise :class:`ModelError` unless the LLM is a decoder-only causal LM with an ``lm_head`` transformers rebuilds."""
    llm = model.language_model
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    text = llm.config.get_text_config()
    if getattr(text, "is_encoder_decoder", False) or text.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{fmt}: the language model {text.model_type} is not a decoder-only causal LM "
                         "transformers can rebuild from its config")
    if not hasattr(llm, "lm_head") or llm.get_output_embeddings() is not llm.lm_head:
        raise ModelError(f"{fmt}: the language model has no lm_head output layer")


def blip_state_dict(model: MultimodalLM, flavour: Flavour = INSTRUCTBLIP) -> dict[str, torch.Tensor]:
    """mmtune's parameters under the checkpoint's module names (LoRA merged)."""
    state = {f"language_model.{k}": v for k, v in merged_state_dict(model.language_model).items()}
    branch = model.branches[IMAGE.name]
    state.update({f"vision_model.{k}": v for k, v in vision_state(branch).items()})
    state.update({flavour.to_checkpoint(k): v for k, v in merged_state_dict(branch.connector).items()})
    return state


def image_processor_for(transform: ImageTransform):
    """A ``BlipImageProcessorPil`` doing what ``transform`` does (``resize`` or ``center_crop``)."""
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    square, common = image_processor_kwargs(transform)
    if transform.mode == "resize":
        return BlipImageProcessorPil(size=square, do_center_crop=False, crop_size=square, **common)
    if transform.mode == "center_crop":
        return BlipImageProcessorPil(size={"shortest_edge": transform.size}, do_center_crop=True, crop_size=square,
                                     **common)
    raise ModelError(f"image_preprocess {transform.mode} has no BlipImageProcessor equivalent")


def blip_config_for(model: MultimodalLM, token_id: int, flavour: Flavour = INSTRUCTBLIP):
    config_class, vision_class, qformer_class = flavour.config_classes()
    branch = model.branches[IMAGE.name]
    vision = vision_config(branch)
    connector: QFormerConnector = branch.connector
    qformer = connector.qformer.config
    qformer_kwargs = {key: getattr(qformer, key) for key in QFORMER_ARCH_KEYS}
    qformer_kwargs["vocab_size"] = qformer.vocab_size
    if not flavour.instruction_aware:
        qformer_kwargs["use_qformer_text_input"] = False
    return config_class(
        vision_config=vision_class(**vision),
        qformer_config=qformer_class(**qformer_kwargs, encoder_hidden_size=vision["hidden_size"]),
        text_config=model.language_model.config.get_text_config().to_dict(),
        num_query_tokens=connector.num_query_tokens, image_token_index=token_id,
    )


@torch.no_grad()
def export_blip(model: nn.Module, tokenizer, out_dir: str | Path, flavour: Flavour = INSTRUCTBLIP) -> Path:
    """Write ``out_dir``: the model's weights, config, processor, tokenizer and Q-Former tokenizer.

    ``model`` is loaded with any adapter merged (``load_for_inference(..., merge=True)``).
    """
    check_exportable(model, flavour)
    fmt = flavour.export_format
    llm = model.language_model
    if hasattr(model.llm, "peft_config"):
        raise ModelError(f"export --format {fmt}: the LLM's adapter could not be merged")
    branch = model.branches[IMAGE.name]
    connector: QFormerConnector = branch.connector
    token_id = add_media_token(tokenizer, llm, fmt)
    config = blip_config_for(model, token_id, flavour)
    config.dtype = next(llm.parameters()).dtype
    tied = bool(config.text_config.tie_word_embeddings)
    hf_model = assign_weights(flavour.model_class(), config, blip_state_dict(model, flavour),
                              lm_head="language_model.lm_head.weight", tied=tied, fmt=fmt)
    if tied:
        hf_model.language_model.lm_head.weight = hf_model.language_model.get_input_embeddings().weight
    hf_model.generation_config = llm.generation_config
    processor = _processor(flavour, branch.transform, tokenizer, connector)
    out_dir = save_export(out_dir, hf_model, processor, tokenizer)
    log.info("exported %s to %s (image token %d, %d query tokens)", type(hf_model).__name__, out_dir, token_id,
             connector.num_query_tokens)
    return out_dir


def _processor(flavour: Flavour, transform: ImageTransform, tokenizer, connector: QFormerConnector):
    from transformers import Blip2Processor, InstructBlipProcessor

    image_processor = image_processor_for(transform)
    if flavour.instruction_aware:
        return InstructBlipProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     qformer_tokenizer=connector.text_tokenizer,
                                     num_query_tokens=connector.num_query_tokens)
    return Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                          num_query_tokens=connector.num_query_tokens)


def export_instructblip(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """``mmtune export --format hf-instructblip``: an ``InstructBlipForConditionalGeneration`` directory."""
    return export_blip(model, tokenizer, out_dir, INSTRUCTBLIP)


def export_blip2(model: nn.Module, tokenizer, out_dir: str | Path) -> Path:
    """``mmtune export --format hf-blip2``: a ``Blip2ForConditionalGeneration`` directory (a Q-Former without text)."""
    return export_blip(model, tokenizer, out_dir, BLIP2)
