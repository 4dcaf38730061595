"""Export to transformers' LlavaForConditionalGeneration and back: parity of logits and tokens.

The model is tiny (a 2-layer CLIP vision model of 32 px, the tiny Llama,
mlp2x_gelu), trained two steps with LoRA on the LLM *and* the encoder so the
export has adapters to merge. Parity is checked on a non-square photo, so the
pad-to-square path is exercised too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mmtune.cli import main
from mmtune.config.schema import ModelConfig, SftRecipe
from mmtune.data.media import attach_media
from mmtune.errors import ConfigError, ModelError
from mmtune.generation.prompts import encode_conversation, media_inputs
from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID, ImageBranchConfig, load_rgb
from mmtune.models.run_outputs import load_for_inference
from mmtune.training.loop import train

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "datasets" / "mmtune-vision" / "images" / "astronaut_patch.jpg"  # 220x110: not square
CLIP_TINY = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
             "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def tiny_vision(**connector) -> dict:
    return {"encoder": {"kind": "hf", "architecture": CLIP_TINY, "select_layer": -2, "select_feature": "patch"},
            "connector": {"kind": "mlp2x_gelu", **connector}, "image_preprocess": "pad"}


def recipe(out: Path, model: dict, *, encoder: str = "lora") -> SftRecipe:
    return SftRecipe(**{
        "output_dir": str(out),
        "model": model,
        "data": {"datasets": [{"card": "mmtune-vision", "max_samples": 4}], "max_length": 128,
                 "cache_dir": str(out.parent / "cache"), "num_workers": 0},
        "method": {"name": "lora", "media": {"image": {"encoder": {"trainable": encoder},
                                                       "connector": {"trainable": "full"}}}},
        "train": {"max_steps": 2, "micro_batch_size": 2, "lr": 1e-2, "progress": False, "tensorboard": False},
    })


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_llama_dir) -> Path:
    out = tmp_path_factory.mktemp("llava") / "run"
    train(recipe(out, {"name": str(tiny_llama_dir), "media": {"image": tiny_vision()}}))
    return out


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    out = trained_run.parent / "hf-llava"
    assert main(["export", str(trained_run), str(out), "--format", "hf-llava"]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(trained_run, exported):
    """(mmtune's model, its tokenizer, the exported model loaded by transformers)."""
    from transformers import LlavaForConditionalGeneration

    ours, tokenizer = load_for_inference(str(trained_run))
    return ours, tokenizer, LlavaForConditionalGeneration.from_pretrained(exported).eval()


def prompt_messages() -> list[dict]:
    return attach_media([{"role": "user", "content": "What is in this picture?"}], [("image", str(PHOTO))])


def mmtune_inputs(model, tokenizer) -> dict:
    """What mmtune's generation feeds the model: ids with placeholders, and the preprocessed image."""
    prompt = encode_conversation(model, tokenizer, prompt_messages())
    media = media_inputs(model, tokenizer, prompt.media)
    return {"input_ids": torch.tensor([prompt.ids]), "media": media, "pixel_values": media["image"].values}


def hf_ids(enc: dict, image_token_id: int) -> torch.Tensor:
    return enc["input_ids"].masked_fill(enc["input_ids"] == IMAGE_PLACEHOLDER_ID, image_token_id)


@torch.no_grad()
def test_exported_llava_matches_mmtune_logits_and_greedy_tokens(loaded):
    ours, tokenizer, hf = loaded
    cfg = hf.config
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == (-2, "default")
    assert cfg.image_seq_length == ours.branches["image"].num_tokens == 16
    assert hf.model.multi_modal_projector.linear_1.bias is not None

    enc = mmtune_inputs(ours, tokenizer)
    ids = hf_ids(enc, cfg.image_token_index)
    vocab = ours.language_model.config.vocab_size
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(input_ids=ids, pixel_values=enc["pixel_values"]).logits
    assert got.shape[1] == ref.shape[1]
    torch.testing.assert_close(got[..., :vocab], ref, atol=1e-4, rtol=1e-4)
    # the LoRA was merged, not dropped: the base LLM alone gives other logits
    with ours.llm.disable_adapter():
        assert not torch.allclose(ours(enc["input_ids"], enc["media"]).logits, ref, atol=1e-3)

    # mmtune's one decoding loop (chat, generate, eval) against transformers' generate on the export
    from mmtune.generation.decoding import SingleModel, decode_batch
    from mmtune.generation.options import GenerationOptions

    ours_tokens = decode_batch(SingleModel(ours), enc["input_ids"].tolist(), GenerationOptions(max_new_tokens=6),
                               stop_ids=[], pad_id=tokenizer.pad_token_id, media=enc["media"])
    hf_tokens = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=enc["pixel_values"],
                            max_new_tokens=6, do_sample=False, eos_token_id=None,
                            pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
    assert hf_tokens.tolist() == ours_tokens


@torch.no_grad()
def test_llava_processor_reproduces_mmtune_inputs(loaded, exported):
    from transformers import AutoProcessor

    ours, tokenizer, hf = loaded
    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    enc = mmtune_inputs(ours, tokenizer)
    text = processor.apply_chat_template(prompt_messages(), add_generation_prompt=True, tokenize=False)
    assert load_rgb(PHOTO).size[0] != load_rgb(PHOTO).size[1]  # the pad-to-square path runs
    inputs = processor(text=text, images=[load_rgb(PHOTO)], return_tensors="pt")
    assert inputs["input_ids"].tolist() == hf_ids(enc, hf.config.image_token_index).tolist()
    torch.testing.assert_close(inputs["pixel_values"], enc["pixel_values"], atol=1e-5, rtol=0)
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**inputs).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_import_of_export_gives_identical_logits(loaded, exported):
    ours, tokenizer, _ = loaded
    back, back_tokenizer = load_for_inference(str(exported))  # a Llava directory
    assert back.branches["image"].transform == ours.branches["image"].transform
    enc = mmtune_inputs(ours, tokenizer)
    assert mmtune_inputs(back, back_tokenizer)["input_ids"].tolist() == enc["input_ids"].tolist()
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = back(enc["input_ids"], enc["media"]).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_training_starts_from_a_llava_checkpoint(exported, tmp_path):
    from mmtune.interop.hf_llava import image_branch_of

    image = image_branch_of(exported)
    assert (image.encoder.kind, image.encoder.name, image.connector.weights) == ("hf", str(exported), str(exported))
    assert image.image_preprocess == "pad"
    result = train(recipe(tmp_path / "run", {"name": str(exported), "media": {"image": image.model_dump()}},
                          encoder="frozen"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    model, _ = load_for_inference(str(result.run_dir))
    start, _ = load_for_inference(str(exported))
    ours, theirs = model.branches["image"], start.branches["image"]
    # stage 2 from the checkpoint: the projector started from the exported one and moved
    assert ours.connector.layers[0].weight.shape == theirs.connector.layers[0].weight.shape
    assert not torch.equal(ours.connector.layers[0].weight, theirs.connector.layers[0].weight)
    assert torch.equal(ours.encoder.model.embeddings.patch_embedding.weight,
                       theirs.encoder.model.embeddings.patch_embedding.weight)


def test_llava_checkpoint_with_other_feature_layer_is_refused(exported):
    from mmtune.interop.hf_llava import image_branch_of
    from mmtune.models.open import open_multimodal

    image = image_branch_of(exported)
    image.encoder.select_layer = -1
    llm, _ = load_for_inference(str(exported))
    with pytest.raises(ConfigError, match=r"select_layer -2, select_feature patch"):
        open_multimodal({"image": image}, llm.llm)


@pytest.mark.parametrize(("vision", "message"), [
    ({"encoder": {"kind": "open_clip", "pretrained": None, "architecture": {
        "embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1}}}},
     "open_clip encoder has no transformers equivalent"),
    (tiny_vision() | {"connector": {"kind": "linear"}}, "connector linear: HF Llava's projector is always a 2-layer"),
    (tiny_vision() | {"connector": {"kind": "mlp3x_gelu"}}, "connector mlp3x_gelu"),
])
def test_export_refuses_what_hf_llava_cannot_express(vision, message, tiny_llama_dir):
    from mmtune.interop.hf_llava import check_exportable
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    model = open_multimodal({"image": ImageBranchConfig(**vision)}, load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))
    with pytest.raises(ModelError, match=message):
        check_exportable(model)


def test_text_run_export_as_llava_is_refused(tiny_llama_dir, tmp_path, capsys):
    assert main(["export", str(tiny_llama_dir), str(tmp_path / "x"), "--format", "hf-llava"]) == 2
    assert "text-only model; export it with --format hf" in capsys.readouterr().err


ODD_SIZES = [(260, 300), (299, 300), (225, 224), (33, 50), (300, 17)]
"""(width, height) of photos whose resize arithmetic differs between rounding and flooring: they exposed a
centre-crop mismatch with transformers' processor."""


@pytest.mark.parametrize("model_type,select_feature", [("clip_vision_model", "patch"),
                                                       ("clip_vision_model", "cls_patch"),  # strategy "full"
                                                       ("siglip_vision_model", "patch")])  # SigLIP has no CLS
@pytest.mark.parametrize("preprocess", ["pad", "resize", "center_crop"])
@torch.no_grad()
def test_every_exportable_encoder_and_preprocessing_round_trips_through_autoprocessor(
        model_type, select_feature, preprocess, tiny_llama_dir, tmp_path):
    """The exported processor (PIL backend) gives mmtune's ids and pixels, so transformers' logits are mmtune's."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration

    from mmtune.interop.hf_llava import export_llava
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    vision = tiny_vision() | {"image_preprocess": preprocess}
    vision["encoder"] = {**vision["encoder"], "architecture": {**CLIP_TINY, "model_type": model_type},
                         "select_feature": select_feature}
    torch.manual_seed(0)
    ours = open_multimodal({"image": ImageBranchConfig(**vision)},
                           load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    out = export_llava(ours, tokenizer, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    rng = np.random.default_rng(0)
    for width, height in [*ODD_SIZES, load_rgb(PHOTO).size]:
        photo = tmp_path / f"{width}x{height}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(photo)
        messages = attach_media([{"role": "user", "content": "What is in this picture?"}], [("image", str(photo))])
        prompt = encode_conversation(ours, tokenizer, messages)
        media = media_inputs(ours, tokenizer, prompt.media)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=text, images=[load_rgb(photo)], return_tensors="pt")
        ids = torch.tensor([prompt.ids])
        assert inputs["input_ids"].tolist() == hf_ids({"input_ids": ids}, hf.config.image_token_index).tolist()
        torch.testing.assert_close(inputs["pixel_values"], media["image"].values, atol=1e-5, rtol=0)
        ref = ours(ids, media).logits
        torch.testing.assert_close(hf(**inputs).logits[..., : ref.shape[-1]], ref, atol=1e-4, rtol=0)
