"""InstructBLIP / BLIP-2 interop: export to transformers' classes and start from (or chat with) their checkpoints.

The models are tiny: a 2-layer InstructBLIP vision model of 32 px (16 patches + CLS), a 2-layer Q-Former of
width 32 with 4 queries and mmtune's ``basic`` BERT vocabulary, and the tiny Llama. The trained run has LoRA
on the LLM, the encoder *and* the Q-Former, so the export has adapters to merge everywhere. Parity is checked
three ways: logits (atol 1e-4), greedy tokens (mmtune's decoding loop against transformers' ``generate``) and
the exported processor reproducing mmtune's input ids, pixels and Q-Former ids. The reverse direction starts
from checkpoints written by transformers itself (random InstructBLIP and BLIP-2 models with their processors).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mmtune.cli import main
from mmtune.config.schema import ModelConfig, SftRecipe
from mmtune.data.media import attach_media
from mmtune.data.templates import install_template
from mmtune.errors import ConfigError, ModelError
from mmtune.generation.prompts import encode_conversation, media_inputs
from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID, ImageBranchConfig, load_rgb
from mmtune.models.run_outputs import load_for_inference
from mmtune.training.loop import train

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "datasets" / "mmtune-vision" / "images" / "astronaut_patch.jpg"  # 220x110: not square
QUESTION = "What is in this picture?"
VISION_TINY = {"model_type": "instructblip_vision_model", "hidden_size": 32, "intermediate_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
QFORMER_TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
QUERIES = 4


LN_VISION = {"ln_vision": {"kind": "layer_norm"}}


def tiny_blip(*, aware: bool = True, preprocess: str = "resize", vision_type: str = "instructblip_vision_model",
              pieces: dict | None = None, **encoder) -> dict:
    """An image branch as InstructBLIP has it: the vision model's last_hidden_state into a Q-Former."""
    options = {"num_query_tokens": QUERIES, "instruction_aware": aware, "qformer": QFORMER_TINY,
               **({"tokenizer": "basic"} if aware else {})}
    return {"encoder": {"kind": "hf", "architecture": {**VISION_TINY, "model_type": vision_type},
                        "select_layer": -1, "select_feature": "cls_patch", **encoder},
            "pieces": pieces or {}, "connector": {"kind": "qformer", "options": options},
            "image_preprocess": preprocess}


def recipe(out: Path, model: dict, *, encoder: str = "lora", connector: str = "lora") -> SftRecipe:
    return SftRecipe(**{
        "output_dir": str(out),
        "model": model,
        "data": {"datasets": [{"card": "mmtune-vision", "max_samples": 4}], "max_length": 128,
                 "cache_dir": str(out.parent / "cache"), "num_workers": 0, "template": "instructblip"},
        "method": {"name": "lora", "media": {"image": {"encoder": {"trainable": encoder},
                                                       "connector": {"trainable": connector}}}},
        "train": {"max_steps": 2, "micro_batch_size": 2, "lr": 1e-2, "progress": False, "tensorboard": False},
    })


def prompt_messages(photo: Path = PHOTO, question: str = QUESTION) -> list[dict]:
    return attach_media([{"role": "user", "content": question}], [("image", str(photo))])


def mmtune_inputs(model, tokenizer, photo: Path = PHOTO) -> dict:
    """What mmtune's generation feeds the model: ids with placeholders, the image and the Q-Former's ids."""
    prompt = encode_conversation(model, tokenizer, prompt_messages(photo))
    media = media_inputs(model, tokenizer, prompt.media)
    return {"input_ids": torch.tensor([prompt.ids]), "media": media}


def hf_inputs(enc: dict, image_token_id: int, *, aware: bool = True) -> dict:
    """The same inputs under transformers' names."""
    image = enc["media"]["image"]
    ids = enc["input_ids"].masked_fill(enc["input_ids"] == IMAGE_PLACEHOLDER_ID, image_token_id)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": image.values}
    if aware:
        out |= {"qformer_input_ids": image.text_ids, "qformer_attention_mask": image.text_mask}
    return out


def processor_inputs(processor, hf, enc: dict, photo: Path = PHOTO, *, aware: bool = True) -> dict:
    """transformers' processor on ``photo`` and QUESTION, checked against mmtune's inputs ``enc``: the same ids,
    pixels and (instruction-aware) Q-Former ids."""
    inputs = processor(images=[load_rgb(photo)], text=QUESTION, return_tensors="pt")
    expected = hf_inputs(enc, hf.config.image_token_index, aware=aware)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    if aware:
        assert inputs["qformer_input_ids"].tolist() == expected["qformer_input_ids"].tolist()
    return inputs


# --------------------------------------------------------------------------- export of a trained run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_llama_dir) -> Path:
    out = tmp_path_factory.mktemp("instructblip") / "run"
    train(recipe(out, {"name": str(tiny_llama_dir), "media": {"image": tiny_blip()}}))
    return out


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    out = trained_run.parent / "hf-instructblip"
    assert main(["export", str(trained_run), str(out)]) == 0  # the default format of a Q-Former model
    return out


@pytest.fixture(scope="module")
def loaded(trained_run, exported):
    """(mmtune's model, its tokenizer, the exported model loaded by transformers)."""
    from transformers import InstructBlipForConditionalGeneration

    ours, tokenizer = load_for_inference(str(trained_run))
    return ours, tokenizer, InstructBlipForConditionalGeneration.from_pretrained(exported).eval()


@torch.no_grad()
def test_exported_instructblip_matches_mmtune_logits_and_greedy_tokens(loaded):
    ours, tokenizer, hf = loaded
    cfg = hf.config
    connector = ours.branches["image"].connector
    assert cfg.num_query_tokens == ours.branches["image"].num_tokens == QUERIES
    assert cfg.qformer_config.vocab_size == len(connector.text_tokenizer)
    assert cfg.qformer_config.encoder_hidden_size == VISION_TINY["hidden_size"]

    enc = mmtune_inputs(ours, tokenizer)
    assert enc["input_ids"][0, :QUERIES].tolist() == [IMAGE_PLACEHOLDER_ID] * QUERIES  # the queries come first
    inputs = hf_inputs(enc, cfg.image_token_index)
    vocab = ours.language_model.config.vocab_size
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**inputs).logits
    assert got.shape[1] == ref.shape[1]
    torch.testing.assert_close(got[..., :vocab], ref, atol=1e-4, rtol=1e-4)
    # the LoRA was merged, not dropped: the base LLM alone gives other logits
    with ours.llm.disable_adapter():
        assert not torch.allclose(ours(enc["input_ids"], enc["media"]).logits, ref, atol=1e-3)

    # mmtune's one decoding loop (chat, generate, eval) against transformers' generate on the export; its
    # generate() runs the language model's own generation config (rebuilt from the text config), so the
    # export's suppression of the zero-initialised <image> row is passed explicitly
    from mmtune.generation.decoding import SingleModel, decode_batch
    from mmtune.generation.options import GenerationOptions

    assert cfg.image_token_index in hf.generation_config.suppress_tokens
    ours_tokens = decode_batch(SingleModel(ours), enc["input_ids"].tolist(), GenerationOptions(max_new_tokens=6),
                               stop_ids=[], pad_id=tokenizer.pad_token_id, media=enc["media"])
    hf_tokens = hf.generate(**inputs, suppress_tokens=hf.generation_config.suppress_tokens, max_new_tokens=6,
                            do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    assert hf_tokens[:, inputs["input_ids"].shape[1]:].tolist() == ours_tokens


@torch.no_grad()
def test_instructblip_processor_reproduces_mmtune_inputs(loaded, exported):
    from transformers import AutoProcessor

    ours, tokenizer, hf = loaded
    processor = AutoProcessor.from_pretrained(exported, backend="pil")
    assert type(processor).__name__ == "InstructBlipProcessor"
    assert type(processor.image_processor).__name__ == "BlipImageProcessorPil"
    enc = mmtune_inputs(ours, tokenizer)
    assert load_rgb(PHOTO).size[0] != load_rgb(PHOTO).size[1]  # a non-square photo is resized, not padded
    inputs = processor(images=[load_rgb(PHOTO)], text=QUESTION, return_tensors="pt")
    expected = hf_inputs(enc, hf.config.image_token_index)
    assert inputs["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values"], enc["media"]["image"].values, atol=1e-5, rtol=0)
    # the Q-Former reads what mmtune's data pipeline gives the connector
    assert inputs["qformer_input_ids"].tolist() == enc["media"]["image"].text_ids.tolist()
    assert inputs["qformer_attention_mask"].tolist() == enc["media"]["image"].text_mask.tolist()
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**inputs).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_import_of_export_gives_identical_logits(loaded, exported):
    ours, tokenizer, hf = loaded
    back, back_tokenizer = load_for_inference(str(exported))  # an InstructBLIP directory
    assert back.branches["image"].transform == ours.branches["image"].transform
    assert back.branches["image"].connector.instruction_aware
    assert back.generation_config.suppress_tokens == [hf.config.image_token_index]
    enc = mmtune_inputs(ours, tokenizer)
    back_enc = mmtune_inputs(back, back_tokenizer)
    assert back_enc["input_ids"].tolist() == enc["input_ids"].tolist()
    assert back_enc["media"]["image"].text_ids.tolist() == enc["media"]["image"].text_ids.tolist()
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = back(enc["input_ids"], enc["media"]).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_training_starts_from_an_exported_instructblip(exported, tmp_path):
    from mmtune.interop.hf_instructblip import image_branch_of

    image = image_branch_of(exported)
    assert (image.encoder.kind, image.encoder.name, image.connector.weights) == ("hf", str(exported), str(exported))
    assert (image.encoder.select_layer, image.encoder.select_feature, image.image_preprocess) == (-1, "cls_patch",
                                                                                                  "resize")
    assert image.connector.options["tokenizer"] == str(exported / "qformer_tokenizer")
    result = train(recipe(tmp_path / "run", {"name": str(exported), "media": {"image": image.model_dump()}},
                          encoder="frozen", connector="full"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    model, _ = load_for_inference(str(result.run_dir))
    start, _ = load_for_inference(str(exported))
    ours, theirs = model.branches["image"], start.branches["image"]
    # the Q-Former started from the exported one and moved; the frozen vision model did not
    assert not torch.equal(ours.connector.query_tokens, theirs.connector.query_tokens)
    assert torch.equal(ours.encoder.model.embeddings.patch_embedding.weight,
                       theirs.encoder.model.embeddings.patch_embedding.weight)


def test_chat_with_an_exported_instructblip_and_its_run(exported, trained_run, capsys):
    for model in (exported, trained_run):
        assert main(["chat", "--model", str(model), "--image", str(PHOTO), QUESTION, "--max-new-tokens", "3"]) == 0
    assert main(["chat", "--model", str(exported), "--image", str(PHOTO.with_name("nope.png")), QUESTION]) == 2


# --------------------------------------------------------------------------- preprocessing and BLIP-2


ODD_SIZES = [(260, 300), (299, 300), (225, 224), (33, 50), (300, 17), (220, 110)]


HALF = (0.5, 0.5, 0.5)


@pytest.mark.parametrize(("aware", "preprocess", "vision_type", "extra"), [
    (True, "resize", "instructblip_vision_model", {}),
    (True, "center_crop", "blip_2_vision_model", {"image_mean": HALF, "image_std": HALF}),
    (False, "resize", "blip_2_vision_model", {"image_mean": HALF, "image_std": HALF}),
    (False, "center_crop", "instructblip_vision_model", {}),
    (True, "resize", "instructblip_vision_model", {"ln_vision": False, "pieces": LN_VISION}),
])
@torch.no_grad()
def test_every_exportable_branch_round_trips_through_autoprocessor(aware, preprocess, vision_type, extra,
                                                                    tiny_llama_dir, tokenizer, tmp_path):
    """InstructBLIP and BLIP-2 (either vision class, resize or centre crop, CLIP's or other normalisation, the
    vision model's post_layernorm or an ln_vision piece in its place): the exported processor (PIL backend)
    gives mmtune's ids, pixels and Q-Former ids, so transformers' logits are mmtune's; mmtune reads the
    directory back with the same preprocessing."""
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from mmtune.interop import EXPORTERS, default_format
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    torch.manual_seed(0)
    ours = open_multimodal({"image": ImageBranchConfig(**tiny_blip(aware=aware, preprocess=preprocess,
                                                                   vision_type=vision_type, **extra))},
                           load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))).eval()
    for param in ours.branches["image"].pieces.parameters():  # a piece's norm starts as 1 / 0: move it
        param.add_(torch.randn_like(param) * 0.2)
    install_template(tokenizer, "instructblip")
    fmt = default_format(ours)
    assert fmt == ("hf-instructblip" if aware else "hf-blip2")
    out = EXPORTERS[fmt](ours, tokenizer, tmp_path / "hf")
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    import transformers

    hf_class = getattr(transformers, "InstructBlipForConditionalGeneration" if aware else
                       "Blip2ForConditionalGeneration")
    hf = hf_class.from_pretrained(out).eval()
    assert type(processor).__name__ == ("InstructBlipProcessor" if aware else "Blip2Processor")
    rng = np.random.default_rng(0)
    for width, height in ODD_SIZES:
        photo = tmp_path / f"{width}x{height}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(photo)
        enc = mmtune_inputs(ours, tokenizer, photo)
        inputs = processor_inputs(processor, hf, enc, photo, aware=aware)
        ref = ours(enc["input_ids"], enc["media"]).logits
        torch.testing.assert_close(hf(**inputs).logits[..., : ref.shape[-1]], ref, atol=1e-4, rtol=1e-4)
    back, _ = load_for_inference(str(out))
    assert back.branches["image"].transform == ours.branches["image"].transform
    assert back.branches["image"].connector.instruction_aware == aware


# --------------------------------------------------------------------------- checkpoints written by transformers


def save_hf_checkpoint(out: Path, kind: str, tokenizer) -> Path:
    """A random InstructBLIP or BLIP-2 checkpoint as transformers writes one: weights, processor, both tokenizers.

    Its LLM tokenizer has no chat template (as the published checkpoints): mmtune reads it with ``instructblip``.
    BLIP-2's Q-Former has the text feed-forwards (``use_qformer_text_input``), which mmtune drops.
    """
    import transformers
    from tokenizers import AddedToken
    from transformers import LlamaConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    from mmtune.models.multimodal.qformer_tokenizer import load_qformer_tokenizer

    aware = kind == "instructblip"
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    qformer_tok = load_qformer_tokenizer("basic")
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = {k: v for k, v in VISION_TINY.items() if k != "model_type"} | {"initializer_range": 0.02}
    qformer = QFORMER_TINY | {"cross_attention_frequency": 1}
    qformer |= {"vocab_size": len(qformer_tok)} if aware else {"use_qformer_text_input": True}
    prefix = "InstructBlip" if aware else "Blip2"
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, qformer_config=qformer, text_config=text.to_dict(), num_query_tokens=QUERIES,
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(1)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config)
    with torch.no_grad():
        model.query_tokens.normal_(0, 0.02)  # transformers initialises them to zero, LAVIS to N(0, 0.02)
    model.save_pretrained(out)
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    if aware:
        processor = transformers.InstructBlipProcessor(image_processor, tok, qformer_tok, num_query_tokens=QUERIES)
    else:
        processor = transformers.Blip2Processor(image_processor, tok, num_query_tokens=QUERIES)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=["instructblip", "blip-2"])
def hf_checkpoint(request, tmp_path_factory, smol_tokenizer) -> Path:
    return save_hf_checkpoint(tmp_path_factory.mktemp(request.param) / "hf", request.param, smol_tokenizer)


@torch.no_grad()
def test_a_transformers_checkpoint_loads_with_identical_logits(hf_checkpoint):
    import transformers
    from transformers import AutoConfig, AutoProcessor

    kind = AutoConfig.from_pretrained(hf_checkpoint).model_type
    aware = kind == "instructblip"
    hf_class = getattr(transformers, "InstructBlipForConditionalGeneration" if aware else
                       "Blip2ForConditionalGeneration")
    hf = hf_class.from_pretrained(hf_checkpoint).eval()
    ours, tokenizer = load_for_inference(str(hf_checkpoint))
    connector = ours.branches["image"].connector
    assert connector.instruction_aware == aware and connector.num_query_tokens == QUERIES
    if not aware:  # BLIP-2's qformer.layernorm is the connector's qformer.embeddings.layernorm
        torch.testing.assert_close(connector.qformer.embeddings.layernorm.weight, hf.qformer.layernorm.weight)
    enc = mmtune_inputs(ours, tokenizer)  # the instructblip template, installed for a tokenizer without one
    processor = AutoProcessor.from_pretrained(hf_checkpoint, backend="pil")
    inputs = processor_inputs(processor, hf, enc, aware=aware)
    ref = hf(**inputs).logits
    got = ours(enc["input_ids"], enc["media"]).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_training_starts_from_a_transformers_checkpoint_and_exports_back(hf_checkpoint, tmp_path):
    import transformers
    from transformers import AutoProcessor

    from mmtune.interop.hf_instructblip import flavour_of, image_branch_of, qformer_state

    image = image_branch_of(hf_checkpoint)
    result = train(recipe(tmp_path / "run", {"name": str(hf_checkpoint), "media": {"image": image.model_dump()}},
                          encoder="frozen", connector="full"))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    model, tokenizer = load_for_inference(str(result.run_dir))
    start = qformer_state(hf_checkpoint)
    trained = model.branches["image"].connector.state_dict()
    assert set(trained) == set(start)
    assert not torch.equal(trained["query_tokens"], start["query_tokens"])
    assert main(["chat", "--model", str(result.run_dir), "--image", str(PHOTO), QUESTION,
                 "--max-new-tokens", "3"]) == 0

    # and back to transformers' format: the checkpoint's own <image> token is reused, the vocabulary kept
    out = tmp_path / "back"
    assert main(["export", str(result.run_dir), str(out)]) == 0
    aware = flavour_of(hf_checkpoint).instruction_aware
    assert flavour_of(out) is flavour_of(hf_checkpoint)
    hf = getattr(transformers, "InstructBlipForConditionalGeneration" if aware else
                 "Blip2ForConditionalGeneration").from_pretrained(out).eval()
    before = transformers.AutoConfig.from_pretrained(hf_checkpoint)
    assert hf.config.image_token_index == before.image_token_index
    assert hf.config.text_config.vocab_size == before.text_config.vocab_size
    processor = AutoProcessor.from_pretrained(out, backend="pil")
    inputs = processor(images=[load_rgb(PHOTO)], text=QUESTION, return_tensors="pt")
    enc = mmtune_inputs(model, tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(hf(**inputs).logits, model(enc["input_ids"], enc["media"]).logits,
                                   atol=1e-4, rtol=1e-4)


def test_a_recipe_reading_other_features_of_the_checkpoint_is_refused(hf_checkpoint, tiny_llama_dir):
    from mmtune.interop.hf_instructblip import image_branch_of
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    image = image_branch_of(hf_checkpoint)
    image.encoder.select_layer = -2
    with pytest.raises(ConfigError, match=r"last_hidden_state \(select_layer -1, select_feature cls_patch"):
        open_multimodal({"image": image}, load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))


def test_a_t5_checkpoint_is_refused_with_the_reason(tmp_path):
    from transformers import InstructBlipConfig, T5Config

    from mmtune.interop.hf_instructblip import image_branch_of

    config = InstructBlipConfig(text_config=T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32).to_dict())
    config.save_pretrained(tmp_path)
    for attempt in (lambda: load_for_inference(str(tmp_path)), lambda: image_branch_of(tmp_path)):
        with pytest.raises(ModelError, match=r"t5 encoder-decoder \(Flan-T5\); mmtune trains decoder-only"):
            attempt()


# --------------------------------------------------------------------------- refusals


OPEN_CLIP_TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                                  "patch_size": 8},
                  "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1}}
CLIP_TINY = VISION_TINY | {"model_type": "clip_vision_model"}


@pytest.mark.parametrize(("fmt", "vision", "message"), [
    ("hf-instructblip", tiny_blip() | {"connector": {"kind": "mlp2x_gelu"}},
     "a projector model exports with --format hf-llava"),
    ("hf-instructblip", tiny_blip() | {"encoder": {"kind": "open_clip", "pretrained": None,
                                                   "architecture": OPEN_CLIP_TINY, "select_layer": -1,
                                                   "select_feature": "cls_patch"}},
     "the open_clip encoder is open_clip's own ViT, so it has no mapping onto transformers' InstructBlipVisionModel"),
    ("hf-instructblip", tiny_blip() | {"encoder": {"kind": "hf", "architecture": CLIP_TINY, "select_layer": -1,
                                                   "select_feature": "cls_patch"}},
     "the vision model is a clip_vision_model"),
    ("hf-instructblip", tiny_blip(select_layer=-2), "reads select_layer -2, cls_patch, ln_vision on"),
    ("hf-instructblip", tiny_blip(select_feature="patch"), "reads select_layer -1, patch"),
    ("hf-instructblip", tiny_blip(ln_vision=False), "ln_vision off"),
    ("hf-instructblip", tiny_blip(pieces=LN_VISION), "ln_vision on and an ln_vision piece"),
    ("hf-instructblip", tiny_blip(ln_vision=False, pieces={"norm": {"kind": "layer_norm"}, **LN_VISION}),
     "pieces \\['norm', 'ln_vision'\\]; between its vision model and Q-Former InstructBLIP has only ln_vision"),
    ("hf-instructblip", tiny_blip(preprocess="pad"), "image_preprocess pad .* no BlipImageProcessor equivalent"),
    ("hf-instructblip", tiny_blip(aware=False), "BLIP-2's \\(instruction_aware: false\\).*--format hf-blip2"),
    ("hf-blip2", tiny_blip(), "reads the instruction \\(instruction_aware\\).*--format hf-instructblip"),
])
def test_export_refuses_what_instructblip_cannot_express(fmt, vision, message, tiny_llama_dir):
    from mmtune.interop.hf_instructblip import BLIP2, INSTRUCTBLIP, check_exportable
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    model = open_multimodal({"image": ImageBranchConfig(**vision)},
                            load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))
    with pytest.raises(ModelError, match=message):
        check_exportable(model, INSTRUCTBLIP if fmt == "hf-instructblip" else BLIP2)


def test_text_model_export_as_instructblip_is_refused(tiny_llama_dir, tmp_path, capsys):
    assert main(["export", str(tiny_llama_dir), str(tmp_path / "x"), "--format", "hf-instructblip"]) == 2
    assert "text-only model; export it with --format hf" in capsys.readouterr().err


# --------------------------------------------------------------------------- open_clip's EVA (the papers' encoder)


EVA_TINY = "mmtune_test_eva_tiny"


@pytest.fixture(scope="module")
def tiny_eva() -> str:
    """A 3-block EVA01 of 32 px registered with timm, so open_clip builds it as it builds EVA01-g-14's trunk."""
    import timm
    from timm.models import register_model
    from timm.models.eva import Eva

    if not timm.list_models(EVA_TINY):
        def mmtune_test_eva_tiny(pretrained=False, **kwargs):
            model_args = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool")}
            return Eva(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, mlp_ratio=2, **model_args)

        register_model(mmtune_test_eva_tiny)
    return EVA_TINY


def eva_branch(**encoder) -> dict:
    """EVA01-g-14's open_clip layout (a timm trunk, token pool, no projection), read as BLIP-2 reads it: the
    penultimate block's output with the class token, then ln_vision."""
    architecture = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "timm_model_name": EVA_TINY,
                                                    "timm_model_pretrained": False, "timm_pool": "token",
                                                    "timm_proj": None},
                    "text_cfg": OPEN_CLIP_TINY["text_cfg"]}
    branch = tiny_blip(pieces={"ln_vision": {"kind": "layer_norm", "options": {"eps": 1e-6}}})  # EVA's eps
    return branch | {"encoder": {"kind": "open_clip", "pretrained": None, "architecture": architecture,
                                 "select_layer": -2, "select_feature": "cls_patch", **encoder}}


@torch.no_grad()
def test_an_open_clip_eva_trunk_exports_onto_the_instructblip_vision_model(tiny_eva, tiny_llama_dir, tokenizer,
                                                                            tmp_path):
    from transformers import InstructBlipForConditionalGeneration

    from mmtune.interop.hf_instructblip import export_instructblip
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    torch.manual_seed(0)
    ours = open_multimodal({"image": ImageBranchConfig(**eva_branch())},
                           load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))).eval()
    encoder = ours.branches["image"].encoder
    assert len(encoder.visual.trunk.blocks) == 2  # select_layer -2: the last block is pruned, as BLIP-2 does
    for param in ours.branches["image"].parameters():  # q_bias, v_bias, norms and ln_vision start at 0 / 1
        if param.ndim == 1:
            param.add_(torch.randn_like(param) * 0.2)
    install_template(tokenizer, "instructblip")
    out = export_instructblip(ours, tokenizer, tmp_path / "hf")
    hf = InstructBlipForConditionalGeneration.from_pretrained(out).eval()
    assert (hf.config.vision_config.num_hidden_layers, hf.config.vision_config.hidden_size) == (2, 32)
    enc = mmtune_inputs(ours, tokenizer)
    pixels = enc["media"]["image"].values
    torch.testing.assert_close(hf.vision_model(pixel_values=pixels).last_hidden_state,
                               ours.branches["image"].pieces["ln_vision"](encoder(pixels)), atol=1e-5, rtol=1e-5)
    ref = ours(enc["input_ids"], enc["media"]).logits
    got = hf(**hf_inputs(enc, hf.config.image_token_index)).logits[..., : ref.shape[-1]]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    back, back_tokenizer = load_for_inference(str(out))  # from here on a transformers vision model
    back_enc = mmtune_inputs(back, back_tokenizer)
    torch.testing.assert_close(back(back_enc["input_ids"], back_enc["media"]).logits[..., : ref.shape[-1]], ref,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("change", "message"), [
    ("no_ln_vision", "select_feature cls_patch and no ln_vision piece"),
    ({"select_feature": "patch"}, "select_feature patch and a ln_vision piece"),
    ("layer_scale", "block 0 has LayerScale"),
])
def test_eva_trunks_other_than_blip2s_are_refused(change, message, tiny_eva, tiny_llama_dir):
    from mmtune.interop.hf_instructblip import check_exportable
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    branch = eva_branch(**change) if isinstance(change, dict) else eva_branch()
    if change == "no_ln_vision":
        branch["pieces"] = {}
    model = open_multimodal({"image": ImageBranchConfig(**branch)},
                            load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))
    if change == "layer_scale":
        model.branches["image"].encoder.visual.trunk.blocks[0].gamma_1 = torch.nn.Parameter(torch.ones(32))
    with pytest.raises(ModelError, match=message):
        check_exportable(model)
