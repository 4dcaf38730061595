"""Media encoders: the contract, and image encoders over open_clip and transformers.

The contract of every encoder (:class:`MediaEncoder`) is what a branch relies on:

- ``forward(values [B, ...]) -> features [B, N, D]``
- ``hidden_size`` (D) and ``num_tokens`` (N).

An image encoder (:class:`ImageEncoder`) adds what the image modality builds
its preprocessing from (:class:`~mmtune.modalities.image.ImageTransform`):
``image_size`` and ``image_mean`` / ``image_std``, the normalisation its
weights expect; ``forward`` takes ``pixel_values [B, 3, H, W]``.

Anything satisfying a contract can be used from a recipe by dotted import path
(``model.media.image.encoder.kind: my_pkg.encoders:MyEncoder``, called with
``options``); no registry. ``select_layer`` follows transformers'
``hidden_states`` indexing (0 = embeddings, -1 = last block), so -2 means the
same layer for both families, as in LLaVA. Encoders inside checkpoints of
other formats (a Llava directory's vision tower) are read by ``mmtune.interop``,
which wraps them with :func:`hf_vision_encoder`.
"""

from __future__ import annotations

import abc
import logging

import torch
from torch import nn

from mmtune.config.media import EncoderConfig
from mmtune.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
# Normalisation by transformers config type, for checkpoints saved without an image processor
# (BLIP-2 and InstructBLIP normalise with CLIP's statistics).
HF_DEFAULT_STATS = {"clip_vision_model": (CLIP_MEAN, CLIP_STD), "siglip_vision_model": (HALF, HALF)}
BLIP_VISION_TYPES = ("blip_2_vision_model", "instructblip_vision_model")
FROM_SCRATCH_INIT_STD = 0.02
"""Weight init of a transformers BLIP vision model built from ``architecture`` (CLIP's and ViT's value)."""
"""transformers vision models whose ``post_layernorm`` is BLIP-2's ``ln_vision`` (applied by default)."""


class MediaEncoder(nn.Module, abc.ABC):
    """Base class of encoders: subclasses set the attributes and implement ``forward``.

    ``forward`` is abstract, so an encoder that forgets it fails when it is built, not at the first batch.
    """

    def __init__(self, *, hidden_size: int, num_tokens: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_tokens = num_tokens

    @abc.abstractmethod
    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` (one modality's collated items) -> ``[B, num_tokens, hidden_size]``."""


class ImageEncoder(MediaEncoder):
    """Base class of image encoders: also the resolution and normalisation the image transform needs."""

    def __init__(self, *, hidden_size: int, num_tokens: int, image_size: int,
                 image_mean: tuple[float, float, float] = CLIP_MEAN, image_std: tuple[float, float, float] = CLIP_STD):
        super().__init__(hidden_size=hidden_size, num_tokens=num_tokens)
        self.image_size = image_size
        self.image_mean = tuple(image_mean)
        self.image_std = tuple(image_std)

    @abc.abstractmethod
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, image_size, image_size]`` -> ``[B, num_tokens, hidden_size]``."""


def open_clip_vit_geometry(visual: nn.Module) -> tuple[int, int, tuple[int, int], int] | None:
    """(blocks, width, patch grid, prefix tokens) of an open_clip image tower, or None if not a ViT.

    open_clip has two ViT kinds: its own (CLIP ViT-L/14, ViT-g-14) and timm trunks (EVA01-g-14,
    EVA02, SigLIP); both expose ``forward_intermediates`` with the same signature.
    """
    if hasattr(visual, "transformer"):
        height, width = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
        ph, pw = visual.patch_size
        return len(visual.transformer.resblocks), visual.transformer.width, (height // ph, width // pw), 1
    trunk = getattr(visual, "trunk", None)  # open_clip's TimmModel
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "forward_intermediates"):
        return len(trunk.blocks), trunk.embed_dim, tuple(trunk.patch_embed.grid_size), int(trunk.num_prefix_tokens)
    return None


class OpenClipEncoder(ImageEncoder):
    """An open_clip ViT's hidden states at one layer (blocks after it are pruned away)."""

    def __init__(self, visual: nn.Module, *, select_layer: int, keep_cls: bool, image_mean, image_std,
                 key: str = "encoder"):
        geometry = open_clip_vit_geometry(visual)
        if geometry is None:
            raise ConfigError(f"{key}: this open_clip image tower ({type(visual).__name__}) is not a "
                              "ViT; mmtune's open_clip encoder reads ViT hidden states")
        blocks, width, grid, prefix = geometry
        # hidden_states[k] is the output of block k-1; negative k counts from hidden_states[blocks].
        index = (blocks + select_layer if select_layer < 0 else select_layer - 1)
        if not 0 <= index < blocks:
            raise ConfigError(f"{key}.select_layer: {select_layer} is outside this encoder's "
                              f"{blocks} layers (valid: 1..{blocks} or -1..-{blocks})")
        if hasattr(visual, "transformer"):
            visual.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
        else:
            visual.trunk.prune_intermediate_layers([index], prune_norm=True, prune_head=True)
        keep_prefix = keep_cls and prefix > 0
        super().__init__(hidden_size=width, num_tokens=grid[0] * grid[1] + (prefix if keep_prefix else 0),
                         image_size=grid[0] * (visual.patch_size[0] if hasattr(visual, "patch_size")
                                               else visual.trunk.patch_embed.patch_size[0]),
                         image_mean=image_mean, image_std=image_std)
        self.visual = visual
        self.index = index
        self.keep_cls = keep_prefix

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixel_values, indices=[self.index], stop_early=True, intermediates_only=True,
            output_fmt="NLC", output_extra_tokens=self.keep_cls,
        )
        features = out["image_intermediates"][0]
        if self.keep_cls:
            features = torch.cat([out["image_intermediates_prefix"][0], features], dim=1)
        return features


class HFVisionEncoder(ImageEncoder):
    """A transformers vision model (CLIP, SigLIP, BLIP-2, InstructBLIP) at one hidden layer.

    ``ln_vision``: the model's own ``post_layernorm`` is applied to the selected features (at layer -1 of a
    BLIP-2 / InstructBLIP vision model this is exactly its ``last_hidden_state``).
    """

    def __init__(self, model: nn.Module, *, select_layer: int, keep_cls: bool, image_mean, image_std,
                 key: str = "encoder", ln_vision: bool = False):
        cfg = model.config
        patches = (cfg.image_size // cfg.patch_size) ** 2
        # transformers 5 puts the embeddings on the model, earlier versions under .vision_model.
        embeddings = model.embeddings if hasattr(model, "embeddings") else model.vision_model.embeddings
        # CLIP has one class token in front of the patches; SigLIP has none.
        self.num_prefix = int(embeddings.num_positions) - patches
        layers = cfg.num_hidden_layers
        if not -(layers + 1) <= select_layer <= layers:
            raise ConfigError(f"{key}.select_layer: {select_layer} is outside this encoder's "
                              f"{layers} layers")
        super().__init__(hidden_size=cfg.hidden_size, num_tokens=patches + (self.num_prefix if keep_cls else 0),
                         image_size=cfg.image_size, image_mean=image_mean, image_std=image_std)
        self.model = model
        self.select_layer = select_layer
        self.keep_cls = keep_cls
        self.ln_vision = ln_vision
        if ln_vision and _post_layernorm(model) is None:
            raise ConfigError(f"{key}.ln_vision: {type(model).__name__} has no post_layernorm to apply")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states[self.select_layer]
        hidden = hidden if self.keep_cls else hidden[:, self.num_prefix:]
        return _post_layernorm(self.model)(hidden) if self.ln_vision else hidden


def _post_layernorm(model: nn.Module) -> nn.Module | None:
    inner = model if hasattr(model, "post_layernorm") else getattr(model, "vision_model", None)
    return getattr(inner, "post_layernorm", None)


def hf_vision_class(model_type: str):
    """The transformers class of a vision model type (BLIP-2's and InstructBLIP's are not in ``AutoModel``)."""
    from transformers import AutoModel, Blip2VisionModel, InstructBlipVisionModel

    special = {"blip_2_vision_model": Blip2VisionModel, "instructblip_vision_model": InstructBlipVisionModel}
    if model_type in special:
        return special[model_type]
    return lambda config: AutoModel.from_config(config)


# --------------------------------------------------------------------------- builders


def _keeps_cls(cfg: EncoderConfig, key: str) -> bool:
    """``cls_patch`` keeps the CLS token before the patches; ``cls`` alone (an audio clip's embedding) is refused
    rather than read as ``patch``: an image branch of one token would train on something else than asked."""
    if cfg.select_feature == "cls":
        raise ConfigError(f"{key}.select_feature: cls (the CLS token alone) is for audio encoders; an image "
                          "encoder gives patch (LLaVA) or cls_patch (BLIP-2, InstructBLIP)")
    return cfg.select_feature == "cls_patch"


def build_open_clip(cfg: EncoderConfig, key: str) -> ImageEncoder:
    import open_clip

    if cfg.ln_vision:
        raise ConfigError(f"{key}.ln_vision: open_clip encoders have no norm of their own to apply; BLIP-2's "
                          "ln_vision is the piece `pieces: {ln_vision: {kind: layer_norm}}`")

    keep_cls = _keeps_cls(cfg, key)
    if cfg.architecture is not None:
        try:
            model = open_clip.CLIP(**cfg.architecture)
        except TypeError as exc:
            raise ConfigError(f"{key}.architecture: not an open_clip model config: {exc}") from None
    else:
        try:
            model = open_clip.create_model(cfg.name, pretrained=cfg.pretrained,
                                           force_image_size=cfg.image_size, require_pretrained=cfg.pretrained is not None)
        except Exception as exc:  # open_clip raises RuntimeError / ValueError / hub errors
            raise ModelError(f"could not load open_clip encoder '{cfg.name}' (pretrained={cfg.pretrained!r}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    visual = model.visual
    pre = open_clip.get_model_preprocess_cfg(model)
    mean = cfg.image_mean or tuple(pre.get("mean", CLIP_MEAN))
    std = cfg.image_std or tuple(pre.get("std", CLIP_STD))
    return OpenClipEncoder(visual, select_layer=cfg.select_layer, keep_cls=keep_cls, image_mean=mean, image_std=std,
                           key=key)


def build_hf(cfg: EncoderConfig, key: str) -> ImageEncoder:
    """A transformers vision model by hub name or directory (its own class), or random from ``architecture``."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    if cfg.architecture is not None:
        arch = dict(cfg.architecture)
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"{key}.architecture: needs 'model_type' (clip_vision_model, siglip_vision_model, "
                              "blip_2_vision_model or instructblip_vision_model)")
        if model_type in BLIP_VISION_TYPES:
            # Their configs default to initializer_range 1e-10 (the weights are always loaded): a model built
            # to train from scratch would start with every weight ~0 and features that ignore the image.
            arch.setdefault("initializer_range", FROM_SCRATCH_INIT_STD)
        try:
            config = AutoConfig.for_model(model_type, **arch)
        except ValueError as exc:
            raise ConfigError(f"{key}.architecture: {str(exc).splitlines()[0]}") from None
        return hf_vision_encoder(hf_vision_class(model_type)(config), cfg, key=key)
    try:
        config = AutoConfig.from_pretrained(cfg.name)
        vision_config = config.vision_config if hasattr(config, "vision_config") else config
        if vision_config.model_type in BLIP_VISION_TYPES:
            model = hf_vision_class(vision_config.model_type).from_pretrained(cfg.name)
        else:
            model = AutoModel._model_mapping[type(vision_config)].from_pretrained(cfg.name)
    except Exception as exc:
        raise ModelError(f"could not load vision encoder '{cfg.name}' through transformers: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        processor = AutoImageProcessor.from_pretrained(cfg.name)
    except Exception:  # a model directory without preprocessor_config.json
        processor = None
    return hf_vision_encoder(model, cfg, processor=processor, key=key)


def hf_vision_encoder(model: nn.Module, cfg: EncoderConfig, *, processor=None, key: str = "encoder") -> ImageEncoder:
    """Wrap a loaded transformers vision model as mmtune's encoder, with the recipe's layer and feature choice.

    Normalisation: the recipe's, else the image processor's, else the family's defaults.
    """
    if not any(hasattr(m, "patch_embedding") and hasattr(m, "num_positions") for m in model.modules()):
        raise ConfigError(f"{key}: {type(model).__name__} is not a ViT-style transformers vision "
                          "model (CLIPVisionModel, SiglipVisionModel, Blip2VisionModel, InstructBlipVisionModel)")
    default_mean, default_std = HF_DEFAULT_STATS.get(model.config.model_type, (CLIP_MEAN, CLIP_STD))
    mean = cfg.image_mean or tuple(getattr(processor, "image_mean", None) or default_mean)
    std = cfg.image_std or tuple(getattr(processor, "image_std", None) or default_std)
    if cfg.image_size is not None and cfg.image_size != model.config.image_size:
        raise ConfigError(f"{key}.image_size: {cfg.image_size} differs from the model's "
                          f"{model.config.image_size}; transformers vision models keep their resolution")
    ln_vision = cfg.ln_vision if cfg.ln_vision is not None else model.config.model_type in BLIP_VISION_TYPES
    return HFVisionEncoder(model, select_layer=cfg.select_layer, keep_cls=_keeps_cls(cfg, key),
                           image_mean=mean, image_std=std, key=key, ln_vision=ln_vision)
