"""Image branch parts: encoder / connector contracts, image tokens in data, bad image input, MultimodalLM.

Everything runs on tiny random encoders built from configs (open_clip with
``pretrained=None``, a tiny transformers CLIPVisionConfig) and the tiny Llama.
Training through these parts: tests/e2e/test_vision_train.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import HF_CLIP_TINY, OPEN_CLIP_TINY, TOKENS, image_specs, llava_rows, open_clip_image_branch, write_json
from PIL import Image

from mmtune.config.schema import ConnectorConfig, DataConfig, EncoderConfig
from mmtune.data.tokenize import MediaSlot
from mmtune.errors import ConfigError, DataError, ModelError
from mmtune.modalities.base import MediaInputs
from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID, IMAGE_TAG, ImageTransform


KEY = "model.media.image.encoder"  # where errors say the part is configured


def slots(n: int, tokens: int) -> list[MediaSlot]:
    return [MediaSlot(IMAGE_TAG, IMAGE_PLACEHOLDER_ID, tokens)] * n


# --------------------------------------------------------------------------- encoders


def test_open_clip_encoder_reads_the_selected_layer():
    import open_clip

    from mmtune.models.multimodal.build import build_encoder

    torch.manual_seed(0)
    reference = open_clip.CLIP(**OPEN_CLIP_TINY).visual.eval()
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY), KEY).eval()
    assert (encoder.hidden_size, encoder.num_tokens, encoder.image_size) == (32, TOKENS, 32)
    assert len(encoder.visual.transformer.resblocks) == 2  # the last block is pruned: -2 never needs it
    x = torch.randn(2, 3, 32, 32)
    out = reference.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC",
                                          output_extra_tokens=True)
    torch.testing.assert_close(encoder(x), out["image_intermediates"][0])
    with_cls = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY,
                                           select_feature="cls_patch"), KEY)
    assert with_cls.num_tokens == TOKENS + 1 and with_cls(x).shape == (2, TOKENS + 1, 32)


@pytest.mark.parametrize("kind,architecture", [("open_clip", OPEN_CLIP_TINY), ("hf", HF_CLIP_TINY)])
def test_an_image_encoder_refuses_the_cls_token_alone(kind, architecture):
    """``cls`` is an audio encoder's choice; an image encoder once read it as ``patch`` without a word."""
    from mmtune.models.multimodal.build import build_encoder

    with pytest.raises(ConfigError, match=rf"^{KEY}.select_feature: cls \(the CLS token alone\) is for audio"):
        build_encoder(EncoderConfig(kind=kind, pretrained=None, architecture=architecture, select_feature="cls"), KEY)


def test_open_clip_timm_trunk_encoder_eva_style():
    """EVA01-g-14, EVA02 and SigLIP are timm trunks inside open_clip: same contract, same layer rule."""
    import open_clip

    from mmtune.models.multimodal.build import build_encoder

    arch = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                                            "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": OPEN_CLIP_TINY["text_cfg"]}
    torch.manual_seed(0)
    reference = open_clip.CLIP(**arch).visual.eval()
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=arch,
                                          select_feature="cls_patch"), KEY).eval()
    assert (encoder.hidden_size, encoder.num_tokens, encoder.image_size) == (192, 16 * 16 + 1, 224)
    x = torch.randn(1, 3, 224, 224)
    out = reference.forward_intermediates(x, indices=[10], intermediates_only=True, output_fmt="NLC",
                                          output_extra_tokens=True)
    expected = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    torch.testing.assert_close(encoder(x), expected)


def test_hf_clip_encoder_matches_hidden_states_and_drops_cls():
    from mmtune.models.multimodal.build import build_encoder

    encoder = build_encoder(EncoderConfig(kind="hf", architecture=HF_CLIP_TINY), KEY).eval()
    x = torch.randn(2, 3, 32, 32)
    hidden = encoder.model(pixel_values=x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(encoder(x), hidden[-2][:, 1:])
    assert encoder.num_tokens == TOKENS and encoder.image_mean[0] == pytest.approx(0.48145466)
    siglip = build_encoder(EncoderConfig(kind="hf", architecture={**HF_CLIP_TINY, "model_type": "siglip_vision_model"},
                                         select_feature="cls_patch"), KEY)
    assert siglip.num_tokens == TOKENS and siglip.image_mean == (0.5, 0.5, 0.5)  # SigLIP has no CLS token


def test_encoder_errors_are_clear():
    from mmtune.models.multimodal.build import build_encoder

    with pytest.raises(ConfigError, match="select_layer"):
        build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY, select_layer=-9), KEY)
    with pytest.raises(ConfigError, match="cannot import"):
        build_encoder(EncoderConfig(kind="no_such_module:Encoder"), KEY)
    with pytest.raises(ConfigError, match="model_type"):
        build_encoder(EncoderConfig(kind="hf", architecture={"hidden_size": 8}), KEY)


# --------------------------------------------------------------------------- connectors


def test_llava_mlp_connectors():
    from mmtune.models.multimodal.connectors import build_connector

    mlp = build_connector(ConnectorConfig(kind="mlp3x_gelu"), 8, 12, KEY)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 12) and mlp.num_output_tokens(5) == 5
    linear = build_connector(ConnectorConfig(kind="linear"), 8, 12, KEY)
    assert [type(m).__name__ for m in linear.layers] == ["Linear"]
    with pytest.raises(ConfigError, match="neither a built-in"):
        build_connector(ConnectorConfig(kind="mlp2x_relu"), 8, 12, KEY)


# --------------------------------------------------------------------------- images


def test_pad_preprocessing_fills_with_the_mean_colour():
    mean, std = (0.5, 0.25, 0.75), (0.2, 0.2, 0.2)
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    padded = ImageTransform(20, mean, std, "pad")(wide)
    assert padded.shape == (3, 20, 20)
    # Top and bottom quarter are padding: the mean colour normalises to ~0.
    assert padded[:, :3].abs().max() < 0.03 and padded[:, -3:].abs().max() < 0.03
    assert padded[0, 10, 10] == pytest.approx((1 - 0.5) / 0.2, abs=0.03)
    stretched = ImageTransform(20, mean, std, "resize")(wide)
    assert stretched[0].min() == pytest.approx((1 - 0.5) / 0.2, abs=0.03)  # no padding anywhere
    half = Image.new("RGB", (40, 20), (0, 0, 0))
    half.paste((255, 255, 255), (20, 0, 40, 20))
    cropped = ImageTransform(20, (0, 0, 0), (1, 1, 1), "center_crop")(half)
    assert cropped[0, :, 2].max() < 0.1 and cropped[0, :, -2].min() > 0.9  # the centre 20 px: half black, half white


# --------------------------------------------------------------------------- data


def test_image_tags_expand_to_untrained_placeholders(tokenizer):
    from mmtune.data.packing import IGNORE_INDEX, Collator
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments

    conv = [{"role": "user", "content": "<image>\nWhat is it?"},
            {"role": "assistant", "content": "A cat."}]
    enc = encode_segments(tokenizer, [split_segments(tokenizer, conv)], max_length=512, media=[slots(1, 5)],
                          tags=[IMAGE_TAG])[0]
    where = np.flatnonzero(enc.input_ids == IMAGE_PLACEHOLDER_ID)
    assert len(where) == 5 and np.all(np.diff(where) == 1) and enc.media_kept == 1
    assert not enc.trained[where].any()
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    expected_len = len(tokenizer(text.replace("<image>", ""), add_special_tokens=False)["input_ids"]) + 5
    assert abs(len(enc.input_ids) - expected_len) <= 2  # splitting at the tag may change a merge at its edges

    batch = Collator([(enc.input_ids, enc.trained)], pad_id=0)([[0]])
    targets = batch.targets[0].numpy()
    # No position predicts a placeholder, and placeholders predict nothing but the next real token when trained.
    assert np.all(targets[where - 1] == IGNORE_INDEX)
    assert np.all(targets[where[:-1]] == IGNORE_INDEX)
    assert IMAGE_PLACEHOLDER_ID not in targets


def test_truncation_never_cuts_an_image(tokenizer):
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments

    conv = [{"role": "user", "content": "Look: <image> and <image>"},
            {"role": "assistant", "content": "Two pictures, both of them very nice indeed."}]
    segs = split_segments(tokenizer, conv)
    enc = lambda n: encode_segments(tokenizer, [segs], max_length=n, media=[slots(2, 10)], tags=[IMAGE_TAG])[0]  # noqa: E731
    full = enc(4096)
    starts = np.flatnonzero((full.input_ids == IMAGE_PLACEHOLDER_ID) & ~np.r_[False, full.input_ids[:-1] == IMAGE_PLACEHOLDER_ID])
    second = int(starts[1])
    cut = enc(second + 4)
    assert len(cut.input_ids) == second and (cut.media_kept, cut.media_cut) == (1, 1)
    assert (cut.input_ids == IMAGE_PLACEHOLDER_ID).sum() == 10
    exact = enc(second + 10)
    assert (exact.media_kept, exact.media_cut) == (2, 0)


def test_media_slots_may_differ_per_item_and_tags_must_match_them(tokenizer):
    """A branch may give each item its own count (a video's depends on its frames): each tag takes its slot."""
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments

    conv = [{"role": "user", "content": "<image> then <image>"}, {"role": "assistant", "content": "Two."}]
    segs = split_segments(tokenizer, conv)
    two = [MediaSlot(IMAGE_TAG, IMAGE_PLACEHOLDER_ID, 3), MediaSlot(IMAGE_TAG, IMAGE_PLACEHOLDER_ID, 7)]
    out = encode_segments(tokenizer, [segs], max_length=512, media=[two], tags=[IMAGE_TAG])[0]
    runs = np.flatnonzero(np.diff(np.r_[0, (out.input_ids == IMAGE_PLACEHOLDER_ID).astype(int), 0]))
    assert list(runs[1::2] - runs[::2]) == [3, 7]
    with pytest.raises(DataError, match="has <image> where its media list has no more items"):
        encode_segments(tokenizer, [segs], max_length=512, media=[two[:1]], tags=[IMAGE_TAG])
    with pytest.raises(DataError, match="1 media tag\\(s\\) but 2 media item"):
        encode_segments(tokenizer, [split_segments(tokenizer, [{"role": "user", "content": "<image> only"}, conv[1]])],
                        max_length=512, media=[two], tags=[IMAGE_TAG])


def _data_cfg(path: Path, tmp_path: Path, **over) -> DataConfig:
    """A llava dataset entry (given with the former ``image_folder`` key, still read)."""
    spec = {"path": str(path), "format": "llava", "image_folder": str(tmp_path / "images")}
    return DataConfig(datasets=[spec], cache_dir=str(tmp_path / "cache"), max_length=over.pop("max_length", 256), **over)


def test_llava_data_keeps_images_in_order_and_text_only_samples(tokenizer, photos, tmp_path):
    from mmtune.data.pipeline import build_conversation_data

    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                                   seed=0, media=image_specs())
    report = data.reports[0]
    assert (report.samples, report.media) == (8, {"image": 6})
    by_sample = {k: data.train.media(k) for k in range(len(data.train))}
    assert sum(len(v) for v in by_sample.values()) == 6
    assert all(Path(item.path).parent == photos.resolve() for v in by_sample.values() for item in v)
    assert all(item.instruction.startswith("What is in picture") and "row" in item.origin and "field 'image'" in
               item.origin for v in by_sample.values() for item in v)
    for k in range(len(data.train)):
        ids, _ = data.train[k]
        assert (ids == IMAGE_PLACEHOLDER_ID).sum() == TOKENS * len(data.train.media(k))
    again = build_conversation_data(tokenizer, _data_cfg(tmp_path / "d.json", tmp_path), seed=0, media=image_specs())
    assert again.reports[0].from_cache and again.train.media(0) == data.train.media(0)
    other_rule = build_conversation_data(tokenizer, _data_cfg(tmp_path / "d.json", tmp_path), seed=0,
                                         media=image_specs(TOKENS + 1))
    assert not other_rule.reports[0].from_cache  # the token-count rule is part of the cache key
    late = [{"id": "late", "image": "p0.png", "conversations": [  # the image in the second turn, after 40 tokens
        {"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "<image>\nAnd this?"}, {"from": "gpt", "value": "Noise."}]}]
    cut = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "late.json", late), tmp_path, max_length=48),
                                  seed=0, media=image_specs())
    assert (cut.reports[0].media, cut.reports[0].media_cut, cut.reports[0].truncated) == ({}, {"image": 1}, 1)


@pytest.mark.parametrize("case, reason", [
    ("missing", "missing image"),
    ("corrupt", "unreadable image"),
    ("escape", "image path escapes media folder"),
    ("tags", "image tag count mismatch"),
    ("roles", "roles do not alternate"),
])
def test_bad_image_samples_name_file_row_and_field_or_are_counted(tokenizer, photos, tmp_path, case, reason):
    from mmtune.data.pipeline import build_conversation_data

    rows = llava_rows()
    bad = rows[1]
    if case == "missing":
        bad["image"] = "nope.png"
    elif case == "corrupt":
        (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
        bad["image"] = "broken.png"
    elif case == "escape":
        secret = tmp_path / "secret.png"
        Image.new("RGB", (8, 8)).save(secret)
        bad["image"] = "../secret.png"
    elif case == "tags":
        bad["conversations"][2]["value"] += " <image>"
    else:
        bad["conversations"][1]["from"] = "human"
    path = write_json(tmp_path / "d.json", rows)
    with pytest.raises(DataError) as err:
        build_conversation_data(tokenizer, _data_cfg(path, tmp_path), seed=0, media=image_specs())
    assert err.value.reason == reason and f"{path}: row 2" in str(err.value)
    data = build_conversation_data(tokenizer, _data_cfg(path, tmp_path, on_bad_sample="skip"), seed=0,
                                   media=image_specs())
    assert data.reports[0].skipped == {reason: 1} and data.reports[0].samples == 7


def test_images_without_a_vision_model_are_a_config_error(tokenizer, photos, tmp_path):
    from mmtune.data.pipeline import build_conversation_data

    with pytest.raises(ConfigError, match="has images but the model has no image branch"):
        build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path), seed=0)


# --------------------------------------------------------------------------- model


@pytest.fixture()
def tiny_mm(tiny_llama_dir):
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    torch.manual_seed(0)
    llm = load_causal_lm(ModelConfig(name=str(tiny_llama_dir)), device_type="cpu")
    return open_multimodal({"image": open_clip_image_branch()}, llm)


def test_placeholders_receive_the_connector_output_in_order(tiny_mm):
    ids = torch.tensor([[5, *[IMAGE_PLACEHOLDER_ID] * TOKENS, 6, *[IMAGE_PLACEHOLDER_ID] * TOKENS, 7]])
    pixels = MediaInputs(torch.randn(2, 3, 32, 32))
    embeds = tiny_mm.input_embeddings(ids, {"image": pixels})
    images = tiny_mm.branches["image"](pixels)
    torch.testing.assert_close(embeds[0, 1 : 1 + TOKENS], images[0])
    torch.testing.assert_close(embeds[0, 2 + TOKENS : 2 + 2 * TOKENS], images[1])
    table = tiny_mm.language_model.get_input_embeddings()
    torch.testing.assert_close(embeds[0, [0, 1 + TOKENS, -1]], table(torch.tensor([5, 6, 7])))
    with pytest.raises(ModelError, match="image positions"):
        tiny_mm.input_embeddings(ids, {"image": MediaInputs(pixels.values[:1])})
    with pytest.raises(ModelError, match="branches for \\['image'\\] only"):
        tiny_mm.input_embeddings(ids, {"image": pixels, "audio": pixels})


def test_packed_and_unpacked_multimodal_loss_and_gradients_agree(tiny_mm, tokenizer, photos, tmp_path):
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.training.objective import CausalLMObjective

    specs = tiny_mm.media_specs(tokenizer)
    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                                   seed=0, media=specs)
    objective = CausalLMObjective(tiny_mm)
    collate = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)
    results = []
    for packing in (True, False):
        rows = make_rows(data.train.lengths(), 256, packing)
        objective.zero_grad()
        total = torch.zeros(())
        count = 0
        for i in range(0, len(rows), 3):
            loss, n = objective(collate(rows[i : i + 3]))
            loss.backward()
            total += loss.detach()
            count += int(n)
        grad = tiny_mm.branches["image"].connector.layers[0].weight.grad.clone()
        results.append((total / count, grad, len(rows)))
    (packed, g_packed, n_packed), (plain, g_plain, n_plain) = results
    assert n_packed < n_plain
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_packed, g_plain, atol=1e-5, rtol=1e-4)


def test_component_methods_freeze_and_lora_explicitly(tiny_mm):
    from mmtune.config.schema import ComponentMethod, LoraConfig
    from mmtune.training.methods import apply_component_method

    branch = tiny_mm.branches["image"]
    apply_component_method(branch.encoder, ComponentMethod(trainable="lora"), LoraConfig(rank=2), "image.encoder")
    trained = [n for n, p in branch.encoder.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    apply_component_method(branch.connector, ComponentMethod(trainable="frozen"), LoraConfig(), "image.connector")
    assert not any(p.requires_grad for p in branch.connector.parameters())


def test_custom_parts_that_break_the_contract_are_config_errors(tmp_path, monkeypatch):
    from mmtune.models.multimodal.connectors import build_connector
    from mmtune.models.multimodal.build import build_encoder

    (tmp_path / "broken_vision.py").write_text(
        "from mmtune.models.multimodal.encoders import ImageEncoder\n"
        "from mmtune.models.multimodal.connectors import Connector\n"
        "class NoForward(ImageEncoder):\n"
        "    def __init__(self):\n"
        "        super().__init__(hidden_size=8, num_tokens=4, image_size=16)\n"
        "class NoForwardConnector(Connector):\n"
        "    pass\n"
        "class Fine(NoForward):\n"
        "    def forward(self, pixel_values):\n"
        "        return pixel_values\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="abstract method forward"):
        build_encoder(EncoderConfig(kind="broken_vision:NoForward"), KEY)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'width'"):
        build_encoder(EncoderConfig(kind="broken_vision:Fine", options={"width": 3}), KEY)
    with pytest.raises(ConfigError, match="abstract method forward"):
        build_connector(ConnectorConfig(kind="broken_vision:NoForwardConnector"), 8, 8, KEY)




def test_the_instruction_reaches_a_connector_that_reads_it_in_batches(tiny_llama_dir, tokenizer, photos, tmp_path):
    """Collated batches carry each image's user-turn tokens; the loss's gradient reaches the text-query weights."""
    from mmtune.config.schema import ModelConfig
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal
    from mmtune.training.objective import CausalLMObjective

    torch.manual_seed(0)
    branch = open_clip_image_branch(kind="instruction_pool", options={"num_queries": 3, "dim": 32, "heads": 2})
    model = open_multimodal({"image": branch}, load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))
    specs = model.media_specs(tokenizer)
    assert specs["image"].text_tokenizer is tokenizer and specs["image"].count(None) == 3
    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                                   seed=0, media=specs)
    batch = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)(make_rows(data.train.lengths(), 256, True))
    inputs = batch.media["image"]
    assert inputs.text_ids.shape[0] == len(inputs) == 6 and inputs.text_mask.sum(1).min() > 0
    first = next(item for k in range(len(data.train)) for item in data.train.media(k))
    assert tokenizer.decode(inputs.text_ids[0][inputs.text_mask[0].bool()]) in {
        item.instruction for k in range(len(data.train)) for item in data.train.media(k)} and first.instruction
    loss, _ = CausalLMObjective(model)(batch)
    loss.backward()
    assert model.branches["image"].connector.from_instruction.weight.grad.abs().sum() > 0


def test_connector_weights_from_a_bare_state_dict_or_a_former_vision_file(tiny_llama_dir, tmp_path):
    from safetensors.torch import save_file

    from mmtune.models.open import open_branches

    torch.manual_seed(1)
    source = open_branches({"image": open_clip_image_branch()}, 64)["image"].connector
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "projector.safetensors"))  # the connector's own state dict
    save_file({f"connector.{k}": v for k, v in state.items()}, str(tmp_path / "vision.safetensors"))  # before branches
    for weights in (tmp_path / "projector.safetensors", tmp_path / "vision.safetensors", tmp_path):
        branch = open_branches({"image": open_clip_image_branch(weights=str(weights))}, 64)["image"]
        torch.testing.assert_close(branch.connector.layers[2].weight, source.layers[2].weight)
    with pytest.raises(ConfigError, match="the weights do not fit"):
        open_branches({"image": open_clip_image_branch(kind="linear", weights=str(tmp_path))}, 64)


OWN_TOKENIZER = '''
import torch
from torch import nn
from transformers import BertTokenizer
from mmtune.models.multimodal.connectors import Connector


class OwnWords(Connector):
    """Reads the instruction with its own (BERT) tokenizer and embeddings, as InstructBLIP's Q-Former does."""

    wants_text = True

    def __init__(self, in_dim, out_dim, words):
        super().__init__(in_dim, out_dim)
        self.text_tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
        self.words = nn.Embedding(self.text_tokenizer.vocab_size, in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None):
        assert text_embeds is None, "a connector with its own tokenizer gets no LLM embeddings"
        query = (self.words(text_ids) * text_mask[..., None]).sum(1, keepdim=True)
        return self.proj(features + query)
'''


def test_a_connector_may_read_the_instruction_with_its_own_tokenizer(tiny_llama_dir, tokenizer, photos, tmp_path,
                                                                      monkeypatch):
    from mmtune.config.schema import ModelConfig
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "is", "in", "picture", "anything", "else", "?"]
    (tmp_path / "own_words.py").write_text(OWN_TOKENIZER)
    monkeypatch.syspath_prepend(str(tmp_path))
    branch = open_clip_image_branch(kind="own_words:OwnWords", options={"words": words + [str(i) for i in range(10)]},
                                    max_text_tokens=6)
    model = open_multimodal({"image": branch}, load_causal_lm(ModelConfig(name=str(tiny_llama_dir))))
    specs = model.media_specs(tokenizer)
    own = model.branches["image"].connector.text_tokenizer
    assert specs["image"].text_tokenizer is own and not model.branches["image"].reads_llm_embeddings
    data = build_conversation_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                                   seed=0, media=specs)
    batch = Collator(data.train, pad_id=tokenizer.pad_token_id, media=specs)(make_rows(data.train.lengths(), 256, True))
    ids = batch.media["image"].text_ids
    assert ids.shape[1] <= 6 and (ids[:, 0] == own.cls_token_id).all()  # BERT's tokens, cut to max_text_tokens
    assert own.convert_ids_to_tokens(ids[0, 1:4].tolist()) == ["what", "is", "in"]
    embeds = model.input_embeddings(batch.input_ids, batch.media)
    assert embeds.shape[:2] == batch.input_ids.shape
