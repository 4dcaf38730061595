"""Audio encoders: the contract, and built-ins on transformers: ImageBind-style AST, Whisper, CLAP.

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

``kind: whisper`` is the encoder half of transformers' Whisper (``WhisperEncoder``) over its log-mel features
(``WhisperFeatureExtractor``, 16 kHz): one token per 20 ms, ``max_source_positions`` of them (1500 = 30 s in
the published models). The encoder takes exactly ``2 x max_source_positions`` mel frames, so the extractor's
window (``chunk_length``) is set from the encoder: a clip is zero-padded (or cut) to it. ``kind: clap`` is
transformers' CLAP audio tower (``ClapAudioModel``, HTSAT) over ``ClapFeatureExtractor`` features at 48 kHz
(a clip is repeated to the extractor's 10 s, as CLAP does): its pooled output (``select_feature: cls``, one
token) or its last stage's ``freq x time`` tokens (``patch``). Both load from a local directory of the whole
model or of the audio part, or build with random weights from ``architecture`` (their config's keys).
"""

from __future__ import annotations

import contextlib
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
        with quiet_mel_filters():
            out = self.extractor(clips, sampling_rate=self.extractor.sampling_rate, return_tensors="pt", **self.kwargs)
        return out[self.output]


@contextlib.contextmanager
def quiet_mel_filters():
    """128 mel bins over a 400-sample FFT leave the lowest filter empty (ImageBind's and AST's setting, as
    published); transformers warns about it on every extractor built and every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        yield


def _select(hidden: torch.Tensor, feature: str, prefix: int) -> torch.Tensor:
    """CLS alone, the patches, or both, of ``[B, prefix + patches, D]`` (``prefix`` leading special tokens)."""
    if feature == "cls":
        return hidden[:, :1]
    if feature == "patch":
        return hidden[:, prefix:]
    return hidden


# --------------------------------------------------------------------------- building


def _config_from(config_cls, options: dict[str, Any], key: str):
    """``config_cls(**options)``, refusing keys the config does not know (a typo would silently be ignored)."""
    options = {k: v for k, v in options.items() if k != "model_type"}
    unknown = sorted(set(options) - set(config_cls().to_dict()))
    if unknown:
        raise ConfigError(f"{key}.architecture: unknown {config_cls.__name__} key(s) {unknown}")
    return config_cls(**options)


def _pretrained(model_cls, name: str, key: str, what: str):
    """``model_cls.from_pretrained(name)``; a load that leaves weights missing (transformers only warns, and
    would train on random weights) or fails is one line."""
    try:
        model, info = model_cls.from_pretrained(name, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}.name: cannot load {what} from '{name}' ({str(exc).splitlines()[0][:160]}); give a "
                          "local directory, or an architecture with pretrained: null") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ConfigError(f"{key}.name: '{name}' lacks {len(missing)} weight(s) of {what} (e.g. {missing[0]})")
    return model


def _saved_config(name: str, key: str, family: str):
    """A model directory's config (which class its weights belong to)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}.name: no {family} config at '{name}' ({str(exc).splitlines()[0][:160]})") from None


def _extractor(extractor_cls, name: str, mel_bins: int, key: str, **defaults):
    """The directory's own feature extractor, else the family's published defaults (a directory without one);
    either must make the mel bins the model takes."""
    try:
        with quiet_mel_filters():
            extractor = extractor_cls.from_pretrained(name)
    except (OSError, ValueError):
        extractor = extractor_cls(**defaults)
    made = getattr(extractor, "num_mel_bins", None) or extractor.feature_size  # AST's feature_size is 1
    if made != mel_bins:
        raise ConfigError(f"{key}: the feature extractor at '{name}' makes {made} mel bins but the model takes "
                          f"{mel_bins}")
    return extractor


def _check_layer(select_layer: int, layers: int, key: str) -> None:
    if not -layers - 1 <= select_layer <= layers:
        raise ConfigError(f"{key}.select_layer: {select_layer} is outside the model's {layers} layers")


# --------------------------------------------------------------------------- ast


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
        config = _config_from(ASTConfig, cfg.architecture if cfg.architecture is not None else AUDIO_PRESETS[cfg.name],
                              key)
        model = ASTModel(config)
        with quiet_mel_filters():
            extractor = ASTFeatureExtractor(num_mel_bins=config.num_mel_bins, max_length=config.max_length,
                                            sampling_rate=16000, mean=IMAGEBIND_AUDIO_MEAN, std=IMAGEBIND_AUDIO_STD)
    else:
        model = _pretrained(ASTModel, cfg.name, key, f"an AST audio model (or a geometry: {', '.join(AUDIO_PRESETS)})")
        extractor = _extractor(ASTFeatureExtractor, cfg.name, model.config.num_mel_bins, key,
                               num_mel_bins=model.config.num_mel_bins, max_length=model.config.max_length)
    _check_layer(cfg.select_layer, model.config.num_hidden_layers, key)
    return ASTAudioEncoder(model, extractor, select_layer=cfg.select_layer, select_feature=cfg.select_feature)


# --------------------------------------------------------------------------- whisper


class WhisperAudioEncoder(AudioEncoder):
    """transformers' ``WhisperEncoder`` over ``[B, mel, 2 x max_source_positions]`` features: every 20 ms token."""

    def __init__(self, model, extractor, *, select_layer: int):
        super().__init__(hidden_size=model.config.d_model, num_tokens=model.config.max_source_positions,
                         sampling_rate=int(extractor.sampling_rate),
                         audio_features=FeatureExtractorCall(extractor, "input_features"))
        self.model = model
        self.select_layer = select_layer

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.select_layer == -1:  # after Whisper's final LayerNorm (hidden_states[-1] is the same)
            return self.model(input_features=values).last_hidden_state
        return self.model(input_features=values, output_hidden_states=True).hidden_states[self.select_layer]


def fit_whisper_window(extractor, positions: int):
    """Set the extractor's window to the encoder's: its conv stem halves time, so ``2 x positions`` frames
    (the published 1500 positions: 3000 frames, 30 s; a tiny 100: 2 s)."""
    extractor.nb_max_frames = 2 * positions
    extractor.n_samples = 2 * positions * extractor.hop_length
    seconds = extractor.n_samples / extractor.sampling_rate  # saved with the extractor; an int when whole (as 30)
    extractor.chunk_length = int(seconds) if seconds.is_integer() else seconds
    return extractor


def build_whisper(cfg: EncoderConfig, key: str) -> WhisperAudioEncoder:
    """``kind: whisper``: a Whisper directory / hub name (``WhisperModel``, ``WhisperForConditionalGeneration``
    or a saved ``WhisperEncoder``), or random weights from ``architecture`` (``WhisperConfig`` keys)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if cfg.select_feature != "patch":
        raise ConfigError(f"{key}.select_feature: Whisper has no CLS token; use patch (its frame tokens)")
    if cfg.architecture is not None:
        model = WhisperEncoder(_config_from(WhisperConfig, cfg.architecture, key))
        extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    else:  # a saved encoder, or the encoder of a whole model (the decoder is dropped)
        alone = "WhisperEncoder" in (_saved_config(cfg.name, key, "Whisper").architectures or ())
        model = _pretrained(WhisperEncoder, cfg.name, key, "a Whisper encoder") if alone else \
            _pretrained(WhisperModel, cfg.name, key, "a Whisper model").get_encoder()
        extractor = _extractor(WhisperFeatureExtractor, cfg.name, model.config.num_mel_bins, key,
                               feature_size=model.config.num_mel_bins)
    _check_layer(cfg.select_layer, model.config.encoder_layers, key)
    fit_whisper_window(extractor, model.config.max_source_positions)
    return WhisperAudioEncoder(model, extractor, select_layer=cfg.select_layer)


# --------------------------------------------------------------------------- clap


class ClapAudioEncoder(AudioEncoder):
    """transformers' ``ClapAudioModel`` over ``[B, 1, frames, mel]`` features: its pooled output as one token
    (``cls``), its last stage's ``freq x time`` tokens (``patch``), or both (``cls_patch``)."""

    def __init__(self, model, extractor, *, select_feature: str):
        enc = model.audio_encoder
        side = (enc.spec_size // enc.freq_ratio) * enc.freq_ratio // 2 ** (enc.num_layers - 1)  # as its forward
        patches = (side // enc.patch_stride[0]) * (side // enc.patch_stride[1])
        tokens = {"cls": 1, "patch": patches, "cls_patch": 1 + patches}[select_feature]
        # rand_trunc: unfused models take one channel (the fusion layout has 4); clips no longer than the
        # extractor's max_length_s are never cut, only repeat-padded, so features are deterministic.
        super().__init__(hidden_size=enc.num_features, num_tokens=tokens, sampling_rate=int(extractor.sampling_rate),
                         audio_features=FeatureExtractorCall(extractor, "input_features", {"truncation": "rand_trunc"}))
        self.model = model
        self.select_feature = select_feature

    def train(self, mode: bool = True) -> ClapAudioEncoder:
        """A frozen CLAP keeps its BatchNorm (the mel normalisation it was trained with) on running statistics;
        in train mode it would normalise by each batch and drift its statistics."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.parameters()):
            self.model.eval()
        return self

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        # A fused model reads is_longer; rand_trunc features are never fused clips (fusion is for > 10 s clips)
        longer = values.new_zeros((len(values), 1), dtype=torch.bool) if self.model.config.enable_fusion else None
        out = self.model(input_features=values, is_longer=longer)
        cls = out.pooler_output[:, None]
        if self.select_feature == "cls":
            return cls
        patches = out.last_hidden_state.flatten(2).transpose(1, 2)  # [B, D, freq, time] -> [B, freq x time, D]
        return patches if self.select_feature == "patch" else torch.cat([cls, patches], 1)


def build_clap(cfg: EncoderConfig, key: str) -> ClapAudioEncoder:
    """``kind: clap``: a CLAP directory / hub name (``ClapModel`` or ``ClapAudioModel``), or random weights from
    ``architecture`` (``ClapAudioConfig`` keys)."""
    from transformers import ClapAudioConfig, ClapAudioModel, ClapFeatureExtractor, ClapModel

    if cfg.select_layer != -1:
        raise ConfigError(f"{key}.select_layer: CLAP's stages differ in width; only its final output is a feature "
                          f"(select_layer: -1), got {cfg.select_layer}")
    if cfg.architecture is not None:
        config = _config_from(ClapAudioConfig, cfg.architecture, key)
        width = config.patch_embeds_hidden_size * 2 ** (len(config.depths) - 1)
        if config.hidden_size != width:
            raise ConfigError(f"{key}.architecture: hidden_size must be patch_embeds_hidden_size x 2^(stages - 1) "
                              f"= {width}, got {config.hidden_size}")
        model = ClapAudioModel(config)
        extractor = ClapFeatureExtractor(feature_size=config.num_mel_bins)
    else:  # a whole CLAP gives its audio tower (the text tower and projections are dropped)
        whole = _saved_config(cfg.name, key, "CLAP").model_type == "clap"
        model = _pretrained(ClapModel, cfg.name, key, "a CLAP model").audio_model if whole else \
            _pretrained(ClapAudioModel, cfg.name, key, "a CLAP audio model")
        extractor = _extractor(ClapFeatureExtractor, cfg.name, model.config.num_mel_bins, key,
                               feature_size=model.config.num_mel_bins)
    return ClapAudioEncoder(model, extractor, select_feature=cfg.select_feature)
