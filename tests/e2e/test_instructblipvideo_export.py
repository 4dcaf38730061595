"""InstructBLIP-Video export: a frame-wise Q-Former video run -> transformers' ``InstructBlipVideoForConditionalGeneration``.

Tiny models: a 2-layer InstructBLIP vision model of 32 px (16 patches + CLS), a 2-layer Q-Former of width 32 with
4 queries and mmtune's ``basic`` BERT vocabulary, and the tiny Llama; 4 frames per video (what transformers'
processor and ``generate()`` assume). The run is trained for two steps with LoRA on the LLM, the encoder and the
Q-Former, so the export has adapters to merge everywhere. Parity: logits (atol 1e-4) and greedy tokens against
mmtune's own model, and the exported processor reproducing mmtune's ids, pixels and Q-Former ids. Every other
video layout (a Q-Former across frames with a frame position embedding, an audio branch ...) is refused in one line
and stays in mmtune's format, which reloads exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from media_helpers import write_json, write_video

from mmtune.cli import main
from mmtune.config.schema import ModelConfig, SftRecipe
from mmtune.data.media import attach_media
from mmtune.data.templates import BUILTIN_TEMPLATES
from mmtune.errors import ModelError
from mmtune.generation.prompts import encode_conversation, media_inputs
from mmtune.modalities.video import VIDEO_PLACEHOLDER_ID, VideoBranchConfig
from mmtune.models.run_outputs import load_for_inference
from mmtune.training.loop import train

VISION_TINY = {"model_type": "instructblip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
QFORMER_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
QUERIES, FRAMES = 4, 4
QUESTION = "What happens in this video?"
VIDEO_FIRST = BUILTIN_TEMPLATES["instructblip"]
"""The built-in ``instructblip`` template puts a video's query outputs before everything (BOS included), as
transformers' InstructBlipVideoProcessor lays the prompt out."""


def video_branch(*, per_frame: bool = True, pieces: dict | None = None, connector: dict | None = None) -> dict:
    """A video branch: the vision model on every frame, then InstructBLIP's Q-Former (per frame by default)."""
    options = {"num_query_tokens": QUERIES, "per_frame": per_frame, "tokenizer": "basic", "qformer": QFORMER_TINY}
    return {"encoder": {"kind": "hf", "architecture": VISION_TINY, "select_layer": -1, "select_feature": "cls_patch"},
            "pieces": pieces or {}, "connector": connector or {"kind": "qformer", "options": options},
            "frames": {"mode": "uniform", "num_frames": FRAMES}, "image_preprocess": "resize"}


ACROSS_FRAMES = video_branch(per_frame=False, pieces={"frame_position": {"kind": "segment_position",
                                                                        "options": {"max_segments": 8}}})
"""Video-LLaMA's layout: a frame position embedding, then one Q-Former over all frames."""


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Four 6-frame mp4 clips of 64 px (resized to the encoder's 32; decord wants a multiple of 32) and their LLaVA rows."""
    root = tmp_path_factory.mktemp("clips")
    for i in range(4):
        write_video(root / "videos" / f"v{i}.mp4", frames=6, size=64, seed=i)
    rows = [{"id": str(i), "video": f"v{i}.mp4", "conversations": [
        {"from": "human", "value": f"<video>\nWhat colour is clip {i}?"}, {"from": "gpt", "value": f"colour {i}"}]}
        for i in range(4)]
    write_json(root / "rows.json", rows)
    return root


@pytest.fixture(scope="module")
def video_llama_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """The tiny Llama with the video-first template as its own chat template (``data.template: auto``)."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("llm") / "tiny-llama-video"
    shutil.copytree(tiny_llama_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = VIDEO_FIRST
    tokenizer.save_pretrained(out)
    return out


def recipe(out: Path, llm: Path, clips: Path, branch: dict) -> SftRecipe:
    lora = {"trainable": "lora"}
    return SftRecipe(**{
        "output_dir": str(out),
        "model": {"name": str(llm), "media": {"video": branch}},
        "data": {"datasets": [{"path": str(clips / "rows.json"), "format": "llava",
                               "media_folder": str(clips / "videos")}],
                 "max_length": 128, "cache_dir": str(out.parent / "cache"), "num_workers": 0, "template": "auto"},
        "method": {"name": "lora", "media": {"video": {"encoder": lora, "connector": lora}}},
        "train": {"max_steps": 2, "micro_batch_size": 2, "lr": 1e-2, "progress": False, "tensorboard": False},
    })


def mmtune_inputs(model, tokenizer, clip: Path) -> dict:
    """What mmtune's generation feeds the model: ids with placeholders, the frames and the Q-Former's ids."""
    messages = attach_media([{"role": "user", "content": QUESTION}], [("video", str(clip))])
    prompt = encode_conversation(model, tokenizer, messages)
    return {"input_ids": torch.tensor([prompt.ids]), "media": media_inputs(model, tokenizer, prompt.media)}


def hf_inputs(enc: dict, video_token_id: int) -> dict:
    """The same inputs under transformers' names (pixel_values ``[1, frames, 3, H, W]``)."""
    video = enc["media"]["video"]
    ids = enc["input_ids"].masked_fill(enc["input_ids"] == VIDEO_PLACEHOLDER_ID, video_token_id)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": video.values,
            "qformer_input_ids": video.text_ids, "qformer_attention_mask": video.text_mask}


# --------------------------------------------------------------------------- export of a trained run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, video_llama_dir, clips) -> Path:
    out = tmp_path_factory.mktemp("ibv") / "run"
    train(recipe(out, video_llama_dir, clips, video_branch()))
    return out


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    out = trained_run.parent / "hf-instructblipvideo"
    assert main(["export", str(trained_run), str(out)]) == 0  # the default format of a per-frame Q-Former video model
    return out


@pytest.fixture(scope="module")
def loaded(trained_run, exported):
    from transformers import InstructBlipVideoForConditionalGeneration

    ours, tokenizer = load_for_inference(str(trained_run))
    return ours, tokenizer, InstructBlipVideoForConditionalGeneration.from_pretrained(exported).eval()


@torch.no_grad()
def test_exported_instructblipvideo_matches_mmtune_logits_and_greedy_tokens(loaded, clips):
    ours, tokenizer, hf = loaded
    cfg = hf.config
    assert cfg.num_query_tokens == ours.branches["video"].num_tokens == QUERIES
    enc = mmtune_inputs(ours, tokenizer, clips / "videos" / "v1.mp4")
    assert enc["media"]["video"].values.shape == (1, FRAMES, 3, 32, 32)
    # the frames' query outputs come first, frame-major: QUERIES x FRAMES positions
    assert enc["input_ids"][0, :QUERIES * FRAMES].tolist() == [VIDEO_PLACEHOLDER_ID] * (QUERIES * FRAMES)
    assert enc["input_ids"][0, QUERIES * FRAMES].item() != VIDEO_PLACEHOLDER_ID
    inputs = hf_inputs(enc, cfg.video_token_index)
    vocab = ours.language_model.config.vocab_size
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**inputs).logits
    assert got.shape[1] == ref.shape[1]
    torch.testing.assert_close(got[..., :vocab], ref, atol=1e-4, rtol=1e-4)
    with ours.llm.disable_adapter():  # the LoRA was merged, not dropped
        assert not torch.allclose(ours(enc["input_ids"], enc["media"]).logits, ref, atol=1e-3)

    from mmtune.generation.decoding import SingleModel, decode_batch
    from mmtune.generation.options import GenerationOptions

    assert cfg.video_token_index in hf.generation_config.suppress_tokens
    ours_tokens = decode_batch(SingleModel(ours), enc["input_ids"].tolist(), GenerationOptions(max_new_tokens=6),
                               stop_ids=[], pad_id=tokenizer.pad_token_id, media=enc["media"])
    hf_tokens = hf.generate(**inputs, suppress_tokens=hf.generation_config.suppress_tokens, max_new_tokens=6,
                            do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    assert hf_tokens[:, inputs["input_ids"].shape[1]:].tolist() == ours_tokens


@torch.no_grad()
def test_instructblipvideo_processor_reproduces_mmtune_inputs(loaded, exported, clips):
    """The exported processor samples the 4 frames of a 6-frame clip as mmtune does (uniform: frame k * 6 // 4),
    resizes them, and lays out ids and Q-Former ids as mmtune's pipeline does."""
    import decord
    from transformers import AutoProcessor

    ours, tokenizer, hf = loaded
    processor = AutoProcessor.from_pretrained(exported)
    assert type(processor).__name__ == "InstructBlipVideoProcessor"
    assert type(processor.video_processor).__name__ == "InstructBlipVideoVideoProcessor"
    clip = clips / "videos" / "v2.mp4"
    enc = mmtune_inputs(ours, tokenizer, clip)
    decoded = decord.VideoReader(str(clip)).get_batch(list(range(6))).asnumpy()  # all 6 frames: it samples 4
    inputs = processor(images=decoded, text=QUESTION, return_tensors="pt")
    expected = hf_inputs(enc, hf.config.video_token_index)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    assert inputs["qformer_input_ids"].tolist() == expected["qformer_input_ids"].tolist()
    assert inputs["qformer_attention_mask"].tolist() == expected["qformer_attention_mask"].tolist()
    assert inputs["pixel_values"].shape == expected["pixel_values"].shape
    # torchvision's bicubic resize against PIL's: at most a grey level apart after normalisation
    pixel_gap = (inputs["pixel_values"] - expected["pixel_values"]).abs().max().item()
    assert pixel_gap <= 1.5 / 255 / min(ours.branches["video"].transform.frame.std), pixel_gap
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**{**inputs, "pixel_values": expected["pixel_values"]}).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


FRAME_SIZES = [(64, 64), (96, 64), (50, 33), (300, 17), (32, 32)]


@pytest.mark.parametrize("preprocess", ["resize", "center_crop"])
def test_the_video_processor_samples_and_preprocesses_frames_as_mmtune(preprocess):
    """Random frames of odd sizes: the exported video processor takes mmtune's uniform frames (k * total // N) and
    resizes (or crops) them as mmtune's PIL transform does, to a grey level where torchvision's bicubic rounds
    otherwise (rarely); frames of the encoder's size are identical."""
    import numpy as np
    from PIL import Image

    from mmtune.interop.hf_instructblipvideo import video_processor_for
    from mmtune.modalities.image import ImageTransform
    from mmtune.modalities.video import FrameSampling, frame_indices

    std = (0.26862954, 0.26130258, 0.27577711)
    transform = ImageTransform(32, (0.48145466, 0.4578275, 0.40821073), std, preprocess)
    sampling = FrameSampling(mode="uniform", num_frames=FRAMES)
    processor = video_processor_for(transform, sampling)
    rng = np.random.default_rng(0)
    for width, height in FRAME_SIZES:
        frames = rng.integers(0, 255, (7, height, width, 3), dtype=np.uint8)
        ours = torch.stack([transform(Image.fromarray(frames[i])) for i in frame_indices(sampling, 0, 7, 8.0)])
        theirs = processor(frames, return_tensors="pt")["pixel_values"][0]
        levels = (theirs - ours).abs() * torch.tensor(std)[:, None, None] * 255
        assert levels.max() <= 1.01 and (levels > 0.5).float().mean() < 0.02, (width, height)
        if (width, height) == (32, 32):
            assert levels.max() < 1e-3


# --------------------------------------------------------------------------- refusals; mmtune's own format


@pytest.fixture(scope="module")
def across_frames_run(tmp_path_factory, video_llama_dir, clips) -> Path:
    out = tmp_path_factory.mktemp("video-qformer") / "run"
    train(recipe(out, video_llama_dir, clips, ACROSS_FRAMES))
    return out


@torch.no_grad()
def test_a_video_qformer_run_stays_in_mmtune_format_and_reloads_exactly(across_frames_run, clips, tmp_path,
                                                                       capsys):
    from safetensors.torch import load_file

    model, tokenizer = load_for_inference(str(across_frames_run))
    branch = model.branches["video"]
    assert not branch.frame_wise and branch.num_tokens == QUERIES  # one Q-Former over all frames
    saved = load_file(str(across_frames_run / "final" / "media.safetensors"))
    torch.testing.assert_close(branch.pieces["frame_position"].embedding.weight,
                               saved["video.pieces.frame_position.embedding.weight"], atol=0, rtol=0)
    again, _ = load_for_inference(str(across_frames_run))
    enc = mmtune_inputs(model, tokenizer, clips / "videos" / "v0.mp4")
    assert torch.equal(model(enc["input_ids"], enc["media"]).logits, again(enc["input_ids"], enc["media"]).logits)

    assert main(["export", str(across_frames_run), str(tmp_path / "hf")]) == 2  # no format of its family
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mmtune: error:")]
    assert len(errors) == 1, errors  # one line: why, and where the run stays
    assert "no Hugging Face format holds this model" in errors[0] and "reads all frames at once" in errors[0]
    assert "frame_position (SegmentPositionPiece)" in errors[0] and "stays in mmtune's format" in errors[0]
    assert not (tmp_path / "hf").exists()


def _model(media: dict, llm_dir: Path):
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    return open_multimodal(media, load_causal_lm(ModelConfig(name=str(llm_dir))))


AST_TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "num_mel_bins": 16, "max_length": 32, "patch_size": 16, "frequency_stride": 16, "time_stride": 16}


@pytest.mark.parametrize(("media", "message"), [
    (lambda: {"video": VideoBranchConfig(**ACROSS_FRAMES)},
     r"the Q-Former reads all frames at once \(a video Q-Former, per_frame: false\).*; the video branch has pieces "
     r"frame_position \(SegmentPositionPiece\)"),
    (lambda: {"video": VideoBranchConfig(**video_branch()), "audio": _audio_branch()},
     r"InstructBLIP-Video has one video branch; this model has \['audio', 'video'\] \(transformers has no "
     r"InstructBLIP-Video with audio\)"),
    (lambda: {"audio": _audio_branch()}, r"this model has \['audio'\]"),
    (lambda: {"video": VideoBranchConfig(**video_branch(connector={"kind": "mlp2x_gelu"}))},
     "the connector is a MLP projector, not InstructBLIP-Video's per-frame Q-Former"),
    (lambda: {"video": VideoBranchConfig(**video_branch(connector={"kind": "qformer", "options": {
        "num_query_tokens": QUERIES, "per_frame": True, "instruction_aware": False, "qformer": QFORMER_TINY}}))},
     r"the Q-Former reads no text \(instruction_aware: false\)"),
    (lambda: {"video": VideoBranchConfig(**video_branch() | {"image_preprocess": "pad"})},
     "image_preprocess pad .* no InstructBlipVideoVideoProcessor equivalent"),
])
def test_export_refuses_every_other_video_or_audio_layout_in_one_line(media, message, tiny_llama_dir, tokenizer,
                                                                      tmp_path):
    from mmtune.interop import EXPORTERS, default_format

    model = _model(media(), tiny_llama_dir)
    for attempt in (lambda: EXPORTERS["hf-instructblipvideo"](model, tokenizer, tmp_path / "hf"),
                    lambda: default_format(model)):
        with pytest.raises(ModelError, match=message) as info:
            attempt()
        text = str(info.value)
        assert "\n" not in text and text.endswith("the run stays in mmtune's format (its final/ reloads exactly "
                                                  "with mmtune.models.run_outputs.load_for_inference)")
    assert not (tmp_path / "hf").exists()


def _audio_branch():
    from mmtune.modalities.audio import AudioBranchConfig

    return AudioBranchConfig(encoder={"kind": "ast", "architecture": AST_TINY}, connector={"kind": "linear"},
                             clips=2, clip_seconds=0.5)


def test_default_format_of_a_per_frame_qformer_video_model(tiny_llama_dir):
    from mmtune.interop import default_format

    assert default_format(_model({"video": VideoBranchConfig(**video_branch())}, tiny_llama_dir)) == \
        "hf-instructblipvideo"
