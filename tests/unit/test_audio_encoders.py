"""Built-in audio encoders (``ast``, ``whisper``, ``clap``): tiny random configs, features, shapes, save / load."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mmtune.config.media import EncoderConfig
from mmtune.errors import ConfigError
from mmtune.models.multimodal.audio_encoders import AudioEncoder
from mmtune.models.multimodal.build import build_encoder, encoder_is_rebuildable

pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")

KEY = "model.media.audio.encoder"
AST_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "num_mel_bins": 128, "max_length": 204}
WHISPER_TINY = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
                "num_mel_bins": 80, "max_source_positions": 100,  # 200 mel frames: a 2-s window
                "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 64}
CLAP_TINY = {"patch_embeds_hidden_size": 32, "hidden_size": 256, "depths": [1, 1, 1, 1],
             "num_attention_heads": [2, 2, 2, 2]}
KINDS = {  # kind -> (architecture, select_layer, select_feature, features per clip, tokens, width)
    "ast": (AST_TINY, -1, "cls_patch", (204, 128), 2 + 12 * 19, 32),
    "whisper": (WHISPER_TINY, -1, "patch", (80, 200), 100, 32),
    "clap": (CLAP_TINY, -1, "patch", (1, 1001, 64), 2 * 32, 256),
}


def encoder_cfg(kind: str, **over) -> EncoderConfig:
    arch, layer, feature, *_ = KINDS[kind]
    return EncoderConfig(**({"kind": kind, "name": "tiny", "pretrained": None, "architecture": arch,
                             "select_layer": layer, "select_feature": feature} | over))


def clips(rate: int, n: int = 2, seconds: float = 2.0) -> list[np.ndarray]:
    t = np.arange(int(seconds * rate)) / rate
    return [(0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32) for k in range(n)]


@pytest.fixture(scope="module")
def built() -> dict[str, AudioEncoder]:
    torch.manual_seed(0)
    return {kind: build_encoder(encoder_cfg(kind), KEY).eval() for kind in KINDS}


@pytest.mark.parametrize("kind", list(KINDS))
def test_features_and_output_shapes(built, kind):
    enc = built[kind]
    _, _, _, per_clip, tokens, width = KINDS[kind]
    assert isinstance(enc, AudioEncoder)
    assert enc.sampling_rate == (48000 if kind == "clap" else 16000)
    values = enc.audio_features(clips(enc.sampling_rate))
    assert tuple(values.shape) == (2, *per_clip)
    assert (enc.num_tokens, enc.hidden_size) == (tokens, width)
    with torch.no_grad():
        assert tuple(enc(values).shape) == (2, tokens, width)
    again = pickle.loads(pickle.dumps(enc.audio_features))  # it goes to DataLoader workers
    assert torch.equal(again(clips(enc.sampling_rate)), values)


def test_ast_features_are_imagebinds_filterbank(built):
    from transformers import ASTFeatureExtractor

    clip = clips(16000, n=1)
    ours = built["ast"].audio_features(clip)
    ref = ASTFeatureExtractor(max_length=204, num_mel_bins=128, mean=-4.268, std=4.569)(
        clip, sampling_rate=16000, return_tensors="pt")["input_values"]
    assert torch.equal(ours, ref) and ours.shape == (1, 204, 128)  # ImageBind's [128, 204], transposed
    # 2 s at a 10 ms shift with 25 ms frames: 1 + (32000 - 400) // 160 = 198 frames, then zero frames
    # (normalised after padding, as ImageBind: (0 + 4.268) / 9.138)
    pad = torch.full((6, 128), 4.268 / 9.138)
    assert torch.allclose(ours[0, 198:], pad, atol=1e-6)
    assert not torch.allclose(ours[0, 197], pad[0])


def test_select_options(built):
    assert build_encoder(encoder_cfg("ast", select_feature="cls"), KEY).num_tokens == 1
    assert build_encoder(encoder_cfg("clap", select_feature="cls"), KEY).num_tokens == 1
    whisper_mid = build_encoder(encoder_cfg("whisper", select_layer=-2), KEY).eval()
    whisper_mid.load_state_dict(built["whisper"].state_dict())
    values = built["whisper"].audio_features(clips(16000, n=1))
    with torch.no_grad():
        mid, last = whisper_mid(values), built["whisper"](values)
    assert mid.shape == last.shape and not torch.allclose(mid, last)
    both = build_encoder(encoder_cfg("clap", select_feature="cls_patch"), KEY).eval()
    both.load_state_dict(built["clap"].state_dict())
    values = both.audio_features(clips(48000, n=1))
    with torch.no_grad():
        out, patches = both(values), built["clap"](values)
    assert out.shape == (1, 65, 256) and both.num_tokens == 65
    assert torch.allclose(out[:, 1:], patches, atol=1e-5)
    assert torch.allclose(out[:, 0], patches.mean(1), atol=1e-5)  # the pooled output: the tokens' mean


def test_frozen_clap_keeps_running_statistics(built):
    enc = build_encoder(encoder_cfg("clap"), KEY)
    enc.load_state_dict(built["clap"].state_dict())
    enc.requires_grad_(False)
    enc.train()
    assert enc.training and not enc.model.training
    values = enc.audio_features(clips(48000, n=1))
    with torch.no_grad():
        assert torch.allclose(enc(values), built["clap"](values), atol=1e-5)
    enc.requires_grad_(True)
    assert enc.train().model.training  # a trained CLAP trains its BatchNorm


@pytest.mark.parametrize("kind,option,message", [
    ("ast", {"architecture": {**AST_TINY, "hiden_size": 8}}, "unknown ASTConfig key(s) ['hiden_size']"),
    ("whisper", {"architecture": {**WHISPER_TINY, "layers": 2}}, "unknown WhisperConfig key(s) ['layers']"),
    ("clap", {"architecture": {**CLAP_TINY, "depth": [1]}}, "unknown ClapAudioConfig key(s) ['depth']"),
    ("clap", {"architecture": {**CLAP_TINY, "hidden_size": 64}}, "hidden_size must be"),
    ("whisper", {"select_feature": "cls"}, "Whisper has no CLS token"),
    ("whisper", {"select_layer": 5}, "outside the model's 2 layers"),
    ("clap", {"select_layer": -2}, "select_layer: CLAP's stages differ in width"),
    ("whisper", {"architecture": None, "name": "/nonexistent/whisper"}, "no Whisper config at"),
    ("clap", {"architecture": None, "name": "/nonexistent/clap"}, "no CLAP config at"),
])
def test_bad_configs_are_one_line(kind, option, message):
    with pytest.raises(ConfigError) as err:
        build_encoder(encoder_cfg(kind, **option), KEY)
    assert message in str(err.value) and KEY in str(err.value) and "\n" not in str(err.value)


def _same_outputs(a: AudioEncoder, b: AudioEncoder) -> None:
    values = a.audio_features(clips(a.sampling_rate, n=1))
    assert torch.equal(values, b.audio_features(clips(b.sampling_rate, n=1)))
    with torch.no_grad():
        assert torch.equal(a(values), b.eval()(values))


@pytest.mark.parametrize("kind", list(KINDS))
def test_save_pretrained_and_build_from_directory(built, kind, tmp_path):
    enc = built[kind]
    enc.model.save_pretrained(tmp_path)
    enc.audio_features.extractor.save_pretrained(tmp_path)
    cfg = encoder_cfg(kind, architecture=None, name=str(tmp_path))
    assert encoder_is_rebuildable(cfg) and not encoder_is_rebuildable(encoder_cfg(kind))
    _same_outputs(enc, build_encoder(cfg, KEY))


def test_whole_whisper_and_clap_models_give_their_audio_encoder(built, tmp_path):
    from transformers import ClapConfig, ClapModel, WhisperConfig, WhisperModel

    whisper = WhisperModel(WhisperConfig(**WHISPER_TINY))
    whisper.encoder.load_state_dict(built["whisper"].model.state_dict())
    whisper.save_pretrained(tmp_path / "whisper")  # no feature extractor saved: Whisper's defaults, window fitted
    _same_outputs(built["whisper"], build_encoder(encoder_cfg("whisper", architecture=None,
                                                              name=str(tmp_path / "whisper")), KEY))
    text = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32}
    clap = ClapModel(ClapConfig(text_config=text, audio_config={**CLAP_TINY}, projection_dim=8))
    clap.audio_model.load_state_dict(built["clap"].model.state_dict())
    clap.save_pretrained(tmp_path / "clap")
    _same_outputs(built["clap"], build_encoder(encoder_cfg("clap", architecture=None, name=str(tmp_path / "clap")),
                                               KEY))


def test_directory_missing_the_encoders_weights_is_refused(built, tmp_path):
    built["whisper"].model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": ["WhisperModel"]}))
    with pytest.raises(ConfigError, match="lacks .* weight") as err:
        build_encoder(encoder_cfg("whisper", architecture=None, name=str(tmp_path)), KEY)
    assert "\n" not in str(err.value)


def test_audio_branch_on_each_encoder(built, tmp_path):
    from media_helpers import write_wav

    from mmtune.modalities.audio import AudioBranchConfig
    from mmtune.modalities.base import MediaItem, load_media_inputs
    from mmtune.models.multimodal.build import build_branch

    wav = write_wav(tmp_path / "a.wav", 3.0, rate=44100)
    for kind, (_, _, _, per_clip, tokens, width) in KINDS.items():
        cfg = AudioBranchConfig.model_validate({"encoder": encoder_cfg(kind).model_dump(), "clips": 3,
                                                "connector": {"kind": "linear"}})
        branch = build_branch("audio", cfg, 24, encoder=built[kind])
        inputs = load_media_inputs([MediaItem("audio", str(wav), {})], {"audio": branch.input_spec()})["audio"]
        assert tuple(inputs.values.shape) == (1, 3, *per_clip)
        with torch.no_grad():
            assert tuple(branch(inputs).shape) == (1, 3 * tokens, 24)
