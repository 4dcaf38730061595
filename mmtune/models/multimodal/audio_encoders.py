"""Audio encoders: the contract, and the ImageBind-style audio ViT on transformers' AST.

An audio encoder (:class:`AudioEncoder`) is a :class:`MediaEncoder` over one clip's features that also says what
the audio modality builds its preprocessing from (:class:`~mmtune.modalities.audio.AudioTransform`):

- ``sampling_rate``: the rate clips are decoded at;
- ``audio_features``: a picklable ``list[np.ndarray] -> Tensor [clips, ...]`` (runs in DataLoader workers), the
  encoder's own feature extractor, so chat and evaluation compute exactly what training did.

``kind: ast`` is ImageBind's audio trunk as transformers expresses it (``ASTModel``): 2-s clips at 16 kHz as
128-bin log-mel filterbanks of 204 frames (``ASTFeatureExtractor``, with ImageBind's normalisation: mean
-4.268, std 4.569 x 2 = 9.138), 16 x 16 patches at stride 10 (12 x 19 = 228 patches), 12 blocks of width 768
in the full size. AST adds a distillation token next to CLS, and its patch stem has a bias; ImageBind's has
neither (documented difference; both are trained from scratch offline).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmtune.config.media import EncoderConfig
from mmtune.errors import ConfigError
from mmtune.models.multimodal.encoders import MediaEncoder

IMAGEBIND_AUDIO_MEAN = -4.268
IMAGEBIND_AUDIO_STD = 4.569
"""ImageBind normalises filterbanks with std 9.138; ``ASTFeatureExtractor`` divides by ``2 x std``."""
AUDIO_PRESETS: dict[str, dict[str, Any]] = {
    "imagebind_huge_audio": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                             "intermediate_size": 3072, "num_mel_bins": 128, "max_length": 204, "patch_size": 16,
                             "frequency_stride": 10, "time_stride": 10},
}
"""Geometries by name (``encoder.name``), built with random weights (``pretrained: null``)."""


class AudioEncoder(MediaEncoder):
    """Base class of audio encoders: also the rate and the feature extractor the audio transform needs."""

    def __init__(self, *, hidden_size: int, num_tokens: int, sampling_rate: int, audio_features: Any):
        super().__init__(hidden_size=hidden_size, num_tokens=num_tokens)
        self.sampling_rate = sampling_rate
        self.audio_features = audio_features


@dataclass(frozen=True)
class FeatureExtractorCall:
    """A transformers feature extractor applied to a list of clips (picklable: it goes to workers)."""

    extractor: Any
    output: str
    """The key of the extractor's output the encoder takes (``input_values``, ``input_features``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, clips: list[np.ndarray]) -> torch.Tensor:
        with warnings.catch_warnings():  # 128 mel bins over 257 FFT bins leave the lowest filter empty (as published)
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            out = self.extractor(clips, sampling_rate=self.extractor.sampling_rate, return_tensors="pt", **self.kwargs)
        return out[self.output]


def _select(hidden: torch.Tensor, feature: str, prefix: int) -> torch.Tensor:
    """CLS alone, the patches, or both, of ``[B, prefix + patches, D]`` (``prefix`` leading special tokens)."""
    if feature == "cls":
        return hidden[:, :1]
    if feature == "patch":
        return hidden[:, prefix:]
    return hidden


class ASTAudioEncoder(AudioEncoder):
    """transformers' ``ASTModel`` over ``[B, time, mel]`` filterbanks (one clip per row)."""

    def __init__(self, model, extractor, *, select_layer: int, select_feature: str):
        cfg = model.config
        freq = (cfg.num_mel_bins - cfg.patch_size) // cfg.frequency_stride + 1
        time = (cfg.max_length - cfg.patch_size) // cfg.time_stride + 1
        self.prefix = 2  # CLS and distillation tokens
        tokens = {"cls": 1, "patch": freq * time, "cls_patch": self.prefix + freq * time}[select_feature]
        super().__init__(hidden_size=cfg.hidden_size, num_tokens=tokens, sampling_rate=int(extractor.sampling_rate),
                         audio_features=FeatureExtractorCall(extractor, "input_values"))
        self.model = model
        self.select_layer = select_layer
        self.select_feature = select_feature

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.select_layer == -1:  # the final LayerNorm applies (ImageBind's head norm)
            hidden = self.model(input_values=values).last_hidden_state
        else:
            hidden = self.model(input_values=values, output_hidden_states=True).hidden_states[self.select_layer]
        return _select(hidden, self.select_feature, self.prefix)


def build_ast(cfg: EncoderConfig, key: str) -> ASTAudioEncoder:
    """``kind: ast``: a transformers AST directory / hub name, an ``AUDIO_PRESETS`` name or ``architecture``."""
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    if cfg.architecture is not None or cfg.name in AUDIO_PRESETS:
        if cfg.architecture is None and cfg.pretrained is not None:
            raise ConfigError(f"{key}.pretrained: '{cfg.name}' is a geometry built with random weights (pretrained: "
                              "null); for trained weights give a transformers AST directory as name")
        options = dict(cfg.architecture if cfg.architecture is not None else AUDIO_PRESETS[cfg.name])
        options.pop("model_type", None)
        known = ASTConfig().to_dict()
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise ConfigError(f"{key}.architecture: unknown ASTConfig key(s) {unknown}")
        config = ASTConfig(**options)
        model = ASTModel(config)
        extractor = ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length,
                                        sampling_rate=16000, mean=IMAGEBIND_AUDIO_MEAN, std=IMAGEBIND_AUDIO_STD)
    else:
        try:
            model = ASTModel.from_pretrained(cfg.name)
            extractor = ASTFeatureExtractor.from_pretrained(cfg.name)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}.name: cannot load an AST audio model from '{cfg.name}' "
                              f"({str(exc).splitlines()[0][:160]}); give a local directory, or an architecture / "
                              f"a geometry name ({', '.join(AUDIO_PRESETS)}) with pretrained: null") from None
    if not -model.config.num_hidden_layers - 1 <= cfg.select_layer <= model.config.num_hidden_layers:
        raise ConfigError(f"{key}.select_layer: {cfg.select_layer} is outside the model's "
                          f"{model.config.num_hidden_layers} layers")
    return ASTAudioEncoder(model, extractor, select_layer=cfg.select_layer, select_feature=cfg.select_feature)
