"""InstructBLIP's parts: the Q-Former and Perceiver connectors, EVA / BLIP vision encoders, the instruction's
path from a conversation to the Q-Former, the ``instructblip`` template, warm-up from a start lr, augmentation.

All on tiny random modules (no weights)."""

from __future__ import annotations

import pytest
import torch
from media_helpers import OPEN_CLIP_TINY, llava_rows, write_json

from mmtune.config.media import ConnectorConfig, EncoderConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID, ImageBranchConfig
from mmtune.models.multimodal.connectors import PerceiverResampler, QFormerConnector, build_connector
from mmtune.models.multimodal.qformer_tokenizer import load_qformer_tokenizer

TINY_QFORMER = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def qformer_branch(**options) -> ImageBranchConfig:
    """The tiny open_clip ViT (16 patch tokens of width 32) + a tiny Q-Former with 4 queries."""
    opts = {"num_query_tokens": 4, "tokenizer": "basic", "qformer": TINY_QFORMER} | options
    return ImageBranchConfig(encoder=EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY),
                             connector=ConnectorConfig(kind="qformer", options=opts))


def _tokens(texts):
    enc = load_qformer_tokenizer("basic")(texts, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# --------------------------------------------------------------------------- Q-Former contract


def test_qformer_gives_a_fixed_number_of_tokens_and_reads_the_instruction():
    torch.manual_seed(0)
    q = build_connector(ConnectorConfig(kind="qformer", options={"num_query_tokens": 4, "tokenizer": "basic",
                                                                  "qformer": TINY_QFORMER}), 24, 40, "c")
    assert isinstance(q, QFormerConnector) and q.wants_text and q.text_tokenizer is not None
    from transformers import InstructBlipQFormerModel

    assert isinstance(q.qformer, InstructBlipQFormerModel)  # transformers' implementation, not a re-write
    assert q.num_output_tokens(16) == q.num_output_tokens(257) == 4
    features = torch.randn(2, 16, 24)
    ids, mask = _tokens(["what color is the circle?", "how many objects are there?"])
    out = q(features, ids, mask)
    assert out.shape == (2, 4, 40)
    # The instruction changes what the queries extract from the same image.
    same_image = features[:1].expand(2, -1, -1)
    a = q(same_image, ids, mask)
    assert not torch.allclose(a[0], a[1], atol=1e-4)
    # Padding is masked: an instruction alone equals it padded inside a batch with a longer one.
    alone_ids, alone_mask = _tokens(["what color is the circle?"])
    torch.testing.assert_close(q(features[:1], alone_ids, alone_mask), out[:1], atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelError, match="needs the instruction"):
        q(features)


def test_cross_attention_every_n_layers_and_only_query_outputs_are_projected():
    q = QFormerConnector(24, 40, num_query_tokens=3, tokenizer="basic",
                         qformer=TINY_QFORMER | {"num_hidden_layers": 4, "cross_attention_frequency": 2})
    crossed = [i for i, layer in enumerate(q.qformer.encoder.layer) if layer.has_cross_attention]
    assert crossed == [0, 2]
    assert q.query_tokens.shape == (1, 3, 32) and q.language_projection.in_features == 32
    # Queries are initialised N(0, 0.02) (LAVIS), not zeros.
    assert 0.005 < float(q.query_tokens.detach().std()) < 0.05


def test_blip2_qformer_reads_no_text_and_every_parameter_gets_a_gradient():
    q = QFormerConnector(24, 40, num_query_tokens=4, instruction_aware=False, qformer=TINY_QFORMER)
    assert not q.wants_text and q.text_tokenizer is None
    out = q(torch.randn(2, 16, 24))
    out.sum().backward()
    assert out.shape == (2, 4, 40)
    assert [n for n, p in q.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("options, message", [
    ({"qformer": {"hidden_sise": 32}}, "unknown key"),
    ({"qformer": {"hidden_size": 30, "num_attention_heads": 4}}, "not divisible"),
    ({"num_query_tokens": 0}, "num_query_tokens"),
    ({"qformer": {"vocab_size": 10}}, "set by mmtune"),
])
def test_bad_qformer_options_are_one_line(options, message):
    cfg = ConnectorConfig(kind="qformer", options={"tokenizer": "basic"} | options)
    with pytest.raises(ConfigError, match=message) as err:
        build_connector(cfg, 24, 40, "model.media.image.connector")
    assert "\n" not in str(err.value) and "model.media.image.connector" in str(err.value)


def test_a_missing_qformer_tokenizer_names_what_it_tried(tmp_path):
    with pytest.raises(ModelError, match="could not load the Q-Former tokenizer .*nothing-here.*basic"):
        load_qformer_tokenizer(str(tmp_path / "nothing-here"))


def test_the_basic_tokenizer_keeps_common_words_whole_and_spells_the_rest():
    tok = load_qformer_tokenizer("basic")
    assert tok.tokenize("What colour is the Triangle?") == ["what", "colour", "is", "the", "triangle", "?"]
    assert tok.tokenize("zebu") == ["z", "##e", "##b", "##u"]
    assert tok("hi")["input_ids"][0] == tok.cls_token_id and tok("hi")["input_ids"][-1] == tok.sep_token_id


def test_perceiver_resampler_has_a_fixed_number_of_latents():
    p = build_connector(ConnectorConfig(kind="perceiver", options={"depth": 2, "heads": 2, "dim_head": 8,
                                                                    "num_latents": 5}), 24, 40, "c")
    assert isinstance(p, PerceiverResampler) and not p.wants_text
    assert p.num_output_tokens(16) == p.num_output_tokens(100) == 5
    out = p(torch.randn(3, 16, 24))
    out.sum().backward()
    assert out.shape == (3, 5, 40) and len(p.resampler.blocks) == 2
    assert p.resampler.latents.grad is not None


# --------------------------------------------------------------------------- encoders


def test_eva_through_open_clip_keeps_39_of_40_blocks_in_miniature_then_ln_vision():
    """An EVA01 trunk (timm's ``eva_giant_patch14`` architecture, shrunk to 3 blocks) read at layer -2."""
    from timm.models import register_model
    from timm.models.eva import _create_eva

    from mmtune.models.multimodal.build import build_encoder

    @register_model
    def mmtune_test_tiny_eva01(pretrained=False, **kwargs):
        args = {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 3, "num_heads": 2,
                "mlp_ratio": 6144 / 1408}
        return _create_eva("eva_giant_patch14_224", pretrained=False, **(args | kwargs))

    arch = {"embed_dim": 16, "vision_cfg": {"image_size": 28, "timm_model_name": "mmtune_test_tiny_eva01",
                                            "timm_pool": "token", "timm_proj": None},
            "text_cfg": OPEN_CLIP_TINY["text_cfg"]}
    cfg = EncoderConfig(kind="open_clip", pretrained=None, architecture=arch, select_layer=-2,
                        select_feature="cls_patch")
    with pytest.raises(ConfigError, match="kind: layer_norm"):
        build_encoder(cfg.model_copy(update={"ln_vision": True}), "e")
    torch.manual_seed(0)
    branch_cfg = ImageBranchConfig(encoder=cfg, pieces={"ln_vision": {"kind": "layer_norm"}},
                                   connector=ConnectorConfig(kind="linear"))
    from mmtune.models.multimodal.build import build_branch

    branch = build_branch("image", branch_cfg, 8)
    enc, ln_vision = branch.encoder, branch.pieces["ln_vision"].norm
    assert set(branch.components()) == {"encoder", "pieces.ln_vision", "connector"}  # ln_vision has its own method
    assert len(enc.visual.trunk.blocks) == 2  # the last block is pruned: BLIP-2 reads the penultimate one
    assert enc.num_tokens == 5 and enc.hidden_size == 32 and enc.image_size == 28  # CLS + 2x2 patches
    x = torch.randn(2, 3, 28, 28)
    trunk = enc.visual.trunk
    with torch.no_grad():
        h, rope = trunk._pos_embed(trunk.patch_embed(x))  # EVA01 has no rotary embedding: rope is None
        h = trunk.norm_pre(h)
        for block in trunk.blocks:
            h = block(h, rope=rope)
        torch.testing.assert_close(enc(x), h)
        torch.testing.assert_close(branch.pieces["ln_vision"](enc(x)),
                                   torch.nn.functional.layer_norm(h, (32,), ln_vision.weight, ln_vision.bias))


def test_an_instructblip_vision_model_gives_its_last_hidden_state_by_default():
    from mmtune.models.multimodal.build import build_encoder

    arch = {"model_type": "instructblip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 28, "patch_size": 14}
    enc = build_encoder(EncoderConfig(kind="hf", architecture=arch, select_layer=-1, select_feature="cls_patch"), "e")
    assert enc.ln_vision and enc.num_tokens == 5
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.model(pixel_values=x).last_hidden_state)
    plain = build_encoder(EncoderConfig(kind="hf", architecture=arch, select_layer=-1, select_feature="cls_patch",
                                        ln_vision=False), "e")
    assert not plain.ln_vision
    # Built to train from scratch, it starts with a real init (transformers' BLIP configs default to 1e-10,
    # which makes every image's features the same): its features differ between images.
    assert enc.model.config.initializer_range == 0.02
    with torch.no_grad():
        features = plain(torch.randn(4, 3, 28, 28))
    assert float(features.std(0).mean()) > 0.01


# --------------------------------------------------------------------------- the instruction's path


@pytest.fixture()
def tiny_qformer_mm(tiny_llama_dir):
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    torch.manual_seed(0)
    llm = load_causal_lm(ModelConfig(name=str(tiny_llama_dir)), device_type="cpu")
    return open_multimodal({"image": qformer_branch()}, llm)


def _data_cfg(path, tmp_path):
    from mmtune.config.schema import DataConfig

    return DataConfig(datasets=[{"path": str(path), "format": "llava", "media_folder": str(tmp_path / "images")}],
                      max_length=256, val_fraction=0.0, packing=True)


def test_batches_carry_the_user_turn_in_the_qformer_tokenizer(tiny_qformer_mm, tokenizer, photos, tmp_path):
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data

    specs = tiny_qformer_mm.media_specs(tokenizer)
    bert = tiny_qformer_mm.branches["image"].connector.text_tokenizer
    assert specs["image"].text_tokenizer is bert and specs["image"].count.rule == "fixed:4"
    rows = llava_rows(4)
    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", rows), tmp_path),
                                   seed=0, media=specs)
    first_row = make_rows(data.train.lengths(), 256, False)[:1]
    batch = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)(first_row)
    (item,) = data.train.media(first_row[0][0])
    assert "<image>" not in item.instruction and item.instruction.startswith("What is in picture")
    expected = bert([item.instruction], return_tensors="pt")
    torch.testing.assert_close(batch.media["image"].text_ids, expected["input_ids"])
    torch.testing.assert_close(batch.media["image"].text_mask, expected["attention_mask"])
    assert int((batch.input_ids == IMAGE_PLACEHOLDER_ID).sum()) == 4  # 4 query outputs at the image's place


def test_packed_and_unpacked_agree_with_qformer_inputs(tiny_qformer_mm, tokenizer, photos, tmp_path):
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.training.objective import CausalLMObjective

    specs = tiny_qformer_mm.media_specs(tokenizer)
    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                                   seed=0, media=specs)
    objective = CausalLMObjective(tiny_qformer_mm)
    collate = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)
    results = []
    for packing in (True, False):
        rows = make_rows(data.train.lengths(), 256, packing)
        objective.zero_grad()
        total, count = torch.zeros(()), 0
        for i in range(0, len(rows), 3):
            loss, n = objective(collate(rows[i : i + 3]))
            loss.backward()
            total += loss.detach()
            count += int(n)
        connector = tiny_qformer_mm.branches["image"].connector
        grads = (connector.query_tokens.grad.clone(), connector.qformer.embeddings.word_embeddings.weight.grad.clone())
        results.append((total / count, grads, len(rows)))
    (packed, g_packed, n_packed), (plain, g_plain, n_plain) = results
    assert n_packed < n_plain
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    assert g_packed[1].abs().sum() > 0  # the instruction's BERT embeddings are trained
    for a, b in zip(g_packed, g_plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- template, schedule, augmentation


def test_instructblip_template_puts_the_image_first_and_bos_only_where_the_tokenizer_adds_it(tokenizer):
    from mmtune.data.templates import install_template, render, tokenizer_adds_bos

    install_template(tokenizer, "instructblip")
    messages = [{"role": "user", "content": "Question: what is it? Short answer:\n<image>"},
                {"role": "assistant", "content": "a cat"}]
    assert not tokenizer_adds_bos(tokenizer)  # SmolLM2's tokenizer adds no BOS of its own
    assert render(tokenizer, messages, add_generation_prompt=False) == \
        "<image>Question: what is it? Short answer:a cat" + tokenizer.eos_token
    class AddsBos:
        """What ``render`` sees of a Llama tokenizer: BOS first in every encoding."""

        bos_token_id = 1

        def __call__(self, text):
            return {"input_ids": [1, 42]}

    assert tokenizer_adds_bos(AddsBos())


def test_warmup_rises_linearly_from_the_start_ratio_then_cosine_to_zero():
    from mmtune.training.schedule import lr_lambda

    f = lr_lambda("cosine", warmup=1000, total=60_000, start_ratio=1e-3)
    assert f(0) == pytest.approx(1e-3) and f(500) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert f(1000) == pytest.approx(1.0) and f(60_000) == pytest.approx(0.0, abs=1e-12)
    assert lr_lambda("cosine", warmup=10, total=100)(0) == pytest.approx(0.1)  # the usual rule is unchanged


def test_training_augmentation_applies_to_training_batches_only(photos):
    from PIL import Image

    from mmtune.modalities.image import IMAGE

    class Enc:
        image_size, image_mean, image_std = 32, (0.5,) * 3, (0.5,) * 3

    branch = ImageBranchConfig(image_preprocess="resize", train_augment="random_resized_crop_flip")
    plain, train = IMAGE.transform(branch, Enc()), IMAGE.transform(branch, Enc(), train=True)
    image = Image.open(photos / "p0.png").convert("RGB")
    torch.manual_seed(0)
    a = train(image)
    torch.manual_seed(0)
    assert torch.equal(a, train(image))  # draws come from torch's RNG (seeded per DataLoader worker)
    assert a.shape == plain(image).shape == (3, 32, 32)
    assert not torch.equal(a, plain(image)) and torch.equal(plain(image), plain(image))
    assert IMAGE.transform(ImageBranchConfig(), Enc(), train=True).augment == "none"
