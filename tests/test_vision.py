"""Vision: encoder / connector contracts, image tokens in data, bad image input, MultimodalLM, end to end.

Everything runs on tiny random encoders built from configs (open_clip with
``pretrained=None``, a tiny transformers CLIPVisionConfig) and the tiny Llama.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtune.config.schema import ConnectorConfig, DataConfig, EncoderConfig, VisionConfig
from mmtune.errors import ConfigError, DataError, ModelError
from mmtune.vision.images import IMAGE_PLACEHOLDER_ID, ImageTransform

OPEN_CLIP_TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 32, "width": 16, "heads": 2, "layers": 1},
}
HF_CLIP_TINY = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
TOKENS = 16  # (32 / 8) ** 2 patches


def open_clip_vision(**over) -> VisionConfig:
    enc = {"kind": "open_clip", "pretrained": None, "architecture": OPEN_CLIP_TINY, **over}
    return VisionConfig(encoder=EncoderConfig(**enc), connector=ConnectorConfig(kind="mlp2x_gelu"))


@pytest.fixture()
def photos(tmp_path) -> Path:
    """Four small real-looking images of different shapes in an image folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 30), (32, 32), (24, 48), (50, 20)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def llava_rows(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        if i % 4 == 3:
            rows.append({"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say {i}."},
                                                            {"from": "gpt", "value": f"{i}."}]})
            continue
        rows.append({"id": f"s{i}", "image": f"p{i % 4}.png", "conversations": [
            {"from": "human", "value": f"What is in picture {i}?\n<image>"},
            {"from": "gpt", "value": f"Picture {i} shows coloured noise number {i}."},
            {"from": "human", "value": "Anything else?"},
            {"from": "gpt", "value": "Nothing else."},
        ]})
    return rows


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows))
    return path


# --------------------------------------------------------------------------- encoders


def test_open_clip_encoder_reads_the_selected_layer():
    import open_clip

    from mmtune.vision.encoders import build_encoder

    torch.manual_seed(0)
    reference = open_clip.CLIP(**OPEN_CLIP_TINY).visual.eval()
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY)).eval()
    assert (encoder.hidden_size, encoder.num_tokens, encoder.image_size) == (32, TOKENS, 32)
    assert len(encoder.visual.transformer.resblocks) == 2  # the last block is pruned: -2 never needs it
    x = torch.randn(2, 3, 32, 32)
    out = reference.forward_intermediates(x, indices=[1], intermediates_only=True, output_fmt="NLC",
                                          output_extra_tokens=True)
    torch.testing.assert_close(encoder(x), out["image_intermediates"][0])
    with_cls = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY,
                                           select_feature="cls_patch"))
    assert with_cls.num_tokens == TOKENS + 1 and with_cls(x).shape == (2, TOKENS + 1, 32)


def test_open_clip_timm_trunk_encoder_eva_style():
    """EVA01-g-14, EVA02 and SigLIP are timm trunks inside open_clip: same contract, same layer rule."""
    import open_clip

    from mmtune.vision.encoders import build_encoder

    arch = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "timm_model_name": "eva02_tiny_patch14_224",
                                            "timm_model_pretrained": False, "timm_pool": "token", "timm_proj": "linear"},
            "text_cfg": OPEN_CLIP_TINY["text_cfg"]}
    torch.manual_seed(0)
    reference = open_clip.CLIP(**arch).visual.eval()
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=arch,
                                          select_feature="cls_patch")).eval()
    assert (encoder.hidden_size, encoder.num_tokens, encoder.image_size) == (192, 16 * 16 + 1, 224)
    x = torch.randn(1, 3, 224, 224)
    out = reference.forward_intermediates(x, indices=[10], intermediates_only=True, output_fmt="NLC",
                                          output_extra_tokens=True)
    expected = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    torch.testing.assert_close(encoder(x), expected)


def test_hf_clip_encoder_matches_hidden_states_and_drops_cls():
    from mmtune.vision.encoders import build_encoder

    encoder = build_encoder(EncoderConfig(kind="hf", architecture=HF_CLIP_TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    hidden = encoder.model(pixel_values=x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(encoder(x), hidden[-2][:, 1:])
    assert encoder.num_tokens == TOKENS and encoder.image_mean[0] == pytest.approx(0.48145466)
    siglip = build_encoder(EncoderConfig(kind="hf", architecture={**HF_CLIP_TINY, "model_type": "siglip_vision_model"},
                                         select_feature="cls_patch"))
    assert siglip.num_tokens == TOKENS and siglip.image_mean == (0.5, 0.5, 0.5)  # SigLIP has no CLS token


def test_encoder_errors_are_clear():
    from mmtune.vision.encoders import build_encoder

    with pytest.raises(ConfigError, match="select_layer"):
        build_encoder(EncoderConfig(kind="open_clip", pretrained=None, architecture=OPEN_CLIP_TINY, select_layer=-9))
    with pytest.raises(ConfigError, match="cannot import"):
        build_encoder(EncoderConfig(kind="no_such_module:Encoder"))
    with pytest.raises(ConfigError, match="model_type"):
        build_encoder(EncoderConfig(kind="hf", architecture={"hidden_size": 8}))


# --------------------------------------------------------------------------- connectors


def test_llava_mlp_connectors():
    from mmtune.vision.connectors import build_connector

    mlp = build_connector(ConnectorConfig(kind="mlp3x_gelu"), 8, 12)
    kinds = [type(m).__name__ for m in mlp.layers]
    assert kinds == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert mlp(torch.randn(2, 5, 8)).shape == (2, 5, 12) and mlp.num_output_tokens(5) == 5
    linear = build_connector(ConnectorConfig(kind="linear"), 8, 12)
    assert [type(m).__name__ for m in linear.layers] == ["Linear"]
    with pytest.raises(ConfigError, match="neither a built-in"):
        build_connector(ConnectorConfig(kind="mlp2x_relu"), 8, 12)


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

    conv = [{"role": "user", "content": "<image>\nWhat is it?", "images": ["x"]},
            {"role": "assistant", "content": "A cat."}]
    enc = encode_segments(tokenizer, [split_segments(tokenizer, conv)], max_length=512, image_tokens=5)[0]
    where = np.flatnonzero(enc.input_ids == IMAGE_PLACEHOLDER_ID)
    assert len(where) == 5 and np.all(np.diff(where) == 1) and enc.images == 1
    assert not enc.trained[where].any()
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    expected_len = len(tokenizer(text.replace("<image>", ""), add_special_tokens=False)["input_ids"]) + 5
    assert abs(len(enc.input_ids) - expected_len) <= 2  # splitting at the tag may change a merge at its edges

    class Samples(list):
        def image_paths(self, i):
            return []

    batch = Collator(Samples([(enc.input_ids, enc.trained)]), pad_id=0)([[0]])
    targets = batch.targets[0].numpy()
    # No position predicts a placeholder, and placeholders predict nothing but the next real token when trained.
    assert np.all(targets[where - 1] == IGNORE_INDEX)
    assert np.all(targets[where[:-1]] == IGNORE_INDEX)
    assert IMAGE_PLACEHOLDER_ID not in targets


def test_truncation_never_cuts_an_image(tokenizer):
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments

    conv = [{"role": "user", "content": "Look: <image> and <image>", "images": ["a", "b"]},
            {"role": "assistant", "content": "Two pictures, both of them very nice indeed."}]
    segs = split_segments(tokenizer, conv)
    full = encode_segments(tokenizer, [segs], max_length=4096, image_tokens=10)[0]
    starts = np.flatnonzero((full.input_ids == IMAGE_PLACEHOLDER_ID) & ~np.r_[False, full.input_ids[:-1] == IMAGE_PLACEHOLDER_ID])
    second = int(starts[1])
    cut = encode_segments(tokenizer, [segs], max_length=second + 4, image_tokens=10)[0]
    assert len(cut.input_ids) == second and (cut.images, cut.images_cut) == (1, 1)
    assert (cut.input_ids == IMAGE_PLACEHOLDER_ID).sum() == 10
    exact = encode_segments(tokenizer, [segs], max_length=second + 10, image_tokens=10)[0]
    assert (exact.images, exact.images_cut) == (2, 0)


def _data_cfg(path: Path, tmp_path: Path, **over) -> DataConfig:
    spec = {"path": str(path), "format": "llava", "image_folder": str(tmp_path / "images")}
    return DataConfig(datasets=[spec], cache_dir=str(tmp_path / "cache"), max_length=over.pop("max_length", 256), **over)


def test_llava_data_keeps_images_in_order_and_text_only_samples(tokenizer, photos, tmp_path):
    from mmtune.data.pipeline import build_text_data

    data = build_text_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                           seed=0, image_tokens=TOKENS)
    report = data.reports[0]
    assert (report.samples, report.images) == (8, 6)
    by_len = {k: data.train.image_paths(k) for k in range(len(data.train))}
    assert sum(len(v) for v in by_len.values()) == 6
    assert all(Path(p).parent == photos.resolve() for v in by_len.values() for p in v)
    for k in range(len(data.train)):
        ids, _ = data.train[k]
        assert (ids == IMAGE_PLACEHOLDER_ID).sum() == TOKENS * len(data.train.image_paths(k))
    again = build_text_data(tokenizer, _data_cfg(tmp_path / "d.json", tmp_path), seed=0, image_tokens=TOKENS)
    assert again.reports[0].from_cache and again.train.image_paths(0) == data.train.image_paths(0)


@pytest.mark.parametrize("case, reason", [
    ("missing", "missing image"),
    ("corrupt", "unreadable image"),
    ("escape", "image path escapes image_folder"),
    ("tags", "image tag count mismatch"),
    ("roles", "roles do not alternate"),
])
def test_bad_image_samples_name_file_row_and_field_or_are_counted(tokenizer, photos, tmp_path, case, reason):
    from mmtune.data.pipeline import build_text_data

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
        build_text_data(tokenizer, _data_cfg(path, tmp_path), seed=0, image_tokens=TOKENS)
    assert err.value.reason == reason and f"{path}: row 2" in str(err.value)
    data = build_text_data(tokenizer, _data_cfg(path, tmp_path, on_bad_sample="skip"), seed=0, image_tokens=TOKENS)
    assert data.reports[0].skipped == {reason: 1} and data.reports[0].samples == 7


def test_images_without_a_vision_model_are_a_config_error(tokenizer, photos, tmp_path):
    from mmtune.data.pipeline import build_text_data

    with pytest.raises(ConfigError, match="no image encoder"):
        build_text_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path), seed=0)


# --------------------------------------------------------------------------- model


@pytest.fixture()
def tiny_mm(tiny_llama_dir):
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.vision.build import build_multimodal

    torch.manual_seed(0)
    llm = load_causal_lm(ModelConfig(name=str(tiny_llama_dir)), device_type="cpu")
    return build_multimodal(open_clip_vision(), llm)


def test_placeholders_receive_the_connector_output_in_order(tiny_mm):
    ids = torch.tensor([[5, *[IMAGE_PLACEHOLDER_ID] * TOKENS, 6, *[IMAGE_PLACEHOLDER_ID] * TOKENS, 7]])
    pixels = torch.randn(2, 3, 32, 32)
    embeds = tiny_mm.input_embeddings(ids, pixels)
    images = tiny_mm.image_embeddings(pixels)
    torch.testing.assert_close(embeds[0, 1 : 1 + TOKENS], images[0])
    torch.testing.assert_close(embeds[0, 2 + TOKENS : 2 + 2 * TOKENS], images[1])
    table = tiny_mm.language_model.get_input_embeddings()
    torch.testing.assert_close(embeds[0, [0, 1 + TOKENS, -1]], table(torch.tensor([5, 6, 7])))
    with pytest.raises(ModelError, match="image positions"):
        tiny_mm.input_embeddings(ids, pixels[:1])


def test_packed_and_unpacked_multimodal_loss_and_gradients_agree(tiny_mm, tokenizer, photos, tmp_path):
    from mmtune.data.packing import Collator, make_rows
    from mmtune.data.pipeline import build_text_data
    from mmtune.training.objective import CausalLMObjective

    data = build_text_data(tokenizer, _data_cfg(write_json(tmp_path / "d.json", llava_rows()), tmp_path),
                           seed=0, image_tokens=TOKENS)
    objective = CausalLMObjective(tiny_mm)
    collate = Collator(data.train, pad_id=tokenizer.pad_token_id, image_transform=tiny_mm.transform)
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
        grad = tiny_mm.connector.layers[0].weight.grad.clone()
        results.append((total / count, grad, len(rows)))
    (packed, g_packed, n_packed), (plain, g_plain, n_plain) = results
    assert n_packed < n_plain
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_packed, g_plain, atol=1e-5, rtol=1e-4)


def test_component_methods_freeze_and_lora_explicitly(tiny_mm):
    from mmtune.config.schema import ComponentMethod, LoraConfig
    from mmtune.vision.build import set_component_trainable

    set_component_trainable(tiny_mm.encoder, ComponentMethod(trainable="lora"), LoraConfig(rank=2), "encoder")
    trained = [n for n, p in tiny_mm.encoder.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    set_component_trainable(tiny_mm.connector, ComponentMethod(trainable="frozen"), LoraConfig(), "connector")
    assert not any(p.requires_grad for p in tiny_mm.connector.parameters())


# --------------------------------------------------------------------------- end to end


def _vision_recipe(tiny_recipe, tmp_path, data_path, out: str, **method) -> dict:
    recipe = tiny_recipe()
    recipe["output_dir"] = str(tmp_path / out)
    recipe["model"]["vision"] = open_clip_vision().model_dump(mode="json")
    recipe["data"]["datasets"] = [{"path": str(data_path), "format": "llava", "image_folder": str(tmp_path / "images")}]
    recipe["data"]["num_workers"] = 1
    recipe["method"] = {"name": "lora", **method}
    recipe["train"].update(max_steps=6, micro_batch_size=2, lr=5e-3, warmup_steps=0, scheduler="constant")
    return recipe


def _losses(run_dir: Path) -> list[float]:
    """Losses by step (the last record wins when a resumed run logged a step again)."""
    by_step = {}
    for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()):
        if "loss" in rec:
            by_step[rec["step"]] = rec["loss"]
    return [by_step[k] for k in sorted(by_step)]


def test_two_stage_training_loads_the_stage1_projector_and_loss_falls(tiny_recipe, photos, tmp_path):
    import mmtune
    from safetensors.torch import load_file

    data = write_json(tmp_path / "d.json", llava_rows())
    stage1 = _vision_recipe(tiny_recipe, tmp_path, data, "stage1", name="frozen", connector={"trainable": "full"})
    stage1["data"]["template"] = "plain"
    result = mmtune.train(stage1)
    final = result.final_dir
    assert (final / "vision.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert not (final / "model.safetensors").exists()  # the frozen LLM is not copied
    losses = _losses(result.run_dir)
    assert losses[-1] < losses[0]

    stage2 = _vision_recipe(tiny_recipe, tmp_path, data, "stage2", connector={"trainable": "full", "lr": 1e-3},
                            encoder={"trainable": "frozen"})
    stage2["model"]["vision"]["connector"]["weights"] = str(result.run_dir)
    stage2["train"]["max_steps"] = 8
    result2 = mmtune.train(stage2)
    log = (result2.run_dir / "train.log").read_text()
    assert "connector weights loaded from" in log and "^lm\\.connector\\.: " in log
    assert "encoder" in log and "frozen" in log
    losses2 = _losses(result2.run_dir)
    assert losses2[-1] < losses2[0]
    # Stage 2 starts from stage 1's projector, not from a fresh one.
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.vision.build import build_multimodal

    start = build_multimodal(VisionConfig(**stage2["model"]["vision"]),
                             load_causal_lm(ModelConfig(name=stage2["model"]["name"]), device_type="cpu"))
    stage1_weights = load_file(str(final / "vision.safetensors"))
    torch.testing.assert_close(start.connector.layers[2].weight, stage1_weights["connector.layers.2.weight"])

    from mmtune.chat import GenerationOptions, generate_reply, with_images
    from mmtune.models.finetuned import load_for_inference

    model, tok = load_for_inference(str(result2.run_dir))
    saved = load_file(str(result2.final_dir / "vision.safetensors"))
    torch.testing.assert_close(model.connector.layers[0].weight, saved["connector.layers.0.weight"])
    reply = generate_reply(model, tok, with_images([{"role": "user", "content": "What is it?"}],
                                                   [str(photos / "p0.png")]), GenerationOptions(max_new_tokens=4))
    assert isinstance(reply, str)

    from mmtune.cli import main

    assert main(["chat", "--model", str(result2.run_dir), "--image", str(photos / "p1.png"), "Describe it.",
                 "--max-new-tokens", "3"]) == 0
    assert main(["chat", "--model", str(result2.run_dir), "--image", str(photos / "nope.png"), "Describe it."]) == 2


def test_multimodal_resume_matches_an_uninterrupted_run(tiny_recipe, photos, tmp_path):
    import mmtune

    data = write_json(tmp_path / "d.json", llava_rows())
    full = _vision_recipe(tiny_recipe, tmp_path, data, "full")
    mmtune.train(full)
    part = _vision_recipe(tiny_recipe, tmp_path, data, "part")
    part["train"].update(max_steps=3, save_every=3)
    mmtune.train(part)
    part["train"].update(max_steps=6, resume="auto")
    mmtune.train(part)
    assert _losses(tmp_path / "part")[3:] == pytest.approx(_losses(tmp_path / "full")[3:], abs=1e-6)


CUSTOM = '''
import torch
from torch import nn
from mmtune.vision.encoders import ImageEncoder
from mmtune.vision.connectors import Connector


class PatchConv(ImageEncoder):
    """Any torch vision model: here one strided conv, 8x8 patches -> `width` features."""

    def __init__(self, width=24, image_size=32):
        super().__init__(hidden_size=width, num_tokens=(image_size // 8) ** 2, image_size=image_size)
        self.conv = nn.Conv2d(3, width, kernel_size=8, stride=8)

    def forward(self, pixel_values):
        return self.conv(pixel_values).flatten(2).transpose(1, 2)  # [B, N, width]


class MeanPool(Connector):
    """A resampler-like connector: a fixed number of output tokens whatever N is."""

    def __init__(self, in_dim, out_dim, tokens=4):
        super().__init__(in_dim, out_dim)
        self.tokens = tokens
        self.proj = nn.Linear(in_dim, out_dim)

    def num_output_tokens(self, num_input_tokens):
        return self.tokens

    def forward(self, features, text_ids=None, text_mask=None):
        pooled = nn.functional.adaptive_avg_pool1d(features.transpose(1, 2), self.tokens).transpose(1, 2)
        return self.proj(pooled)
'''


def test_custom_parts_that_break_the_contract_are_config_errors(tmp_path, monkeypatch):
    from mmtune.vision.connectors import build_connector
    from mmtune.vision.encoders import build_encoder

    (tmp_path / "broken_vision.py").write_text(
        "from mmtune.vision.encoders import ImageEncoder\n"
        "from mmtune.vision.connectors import Connector\n"
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
        build_encoder(EncoderConfig(kind="broken_vision:NoForward"))
    with pytest.raises(ConfigError, match="unexpected keyword argument 'width'"):
        build_encoder(EncoderConfig(kind="broken_vision:Fine", options={"width": 3}))
    with pytest.raises(ConfigError, match="abstract method forward"):
        build_connector(ConnectorConfig(kind="broken_vision:NoForwardConnector"), 8, 8)


def test_custom_encoder_and_connector_from_a_recipe(tiny_recipe, photos, tmp_path, monkeypatch):
    import mmtune
    from mmtune.models.finetuned import load_for_inference

    (tmp_path / "my_vision.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_json(tmp_path / "d.json", llava_rows())
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "custom", encoder={"trainable": "full"})
    recipe["model"]["vision"] = {
        "encoder": {"kind": "my_vision:PatchConv", "options": {"width": 24}},
        "connector": {"kind": "my_vision:MeanPool", "options": {"tokens": 4}},
    }
    result = mmtune.train(recipe)
    losses = _losses(result.run_dir)
    assert losses[-1] < losses[0]
    model, _ = load_for_inference(str(result.run_dir))
    assert type(model.encoder).__name__ == "PatchConv" and model.num_image_tokens == 4
