"""Image branches end to end: two-stage LLaVA training, resume, custom parts and pieces, a connector that reads
the instruction, bad image bodies met while batching, and run directories saved before branches existed.

Everything runs on tiny random encoders (open_clip with ``pretrained=None``) and the tiny Llama, on CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media_helpers import llava_rows, losses_by_step, open_clip_image_branch, write_json
from safetensors.torch import load_file, save_file

import mmtune
from mmtune.data.media import attach_media
from mmtune.errors import DataError
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.modalities.base import MediaInputs
from mmtune.models.run_outputs import load_for_inference


def _vision_recipe(tiny_recipe, tmp_path, data_path, out: str, llm: str = "lora", **image_method) -> dict:
    recipe = tiny_recipe()
    recipe["output_dir"] = str(tmp_path / out)
    recipe["model"]["media"] = {"image": open_clip_image_branch().model_dump(mode="json")}
    recipe["data"]["datasets"] = [{"path": str(data_path), "format": "llava", "media_folder": str(tmp_path / "images")}]
    recipe["data"]["num_workers"] = 1
    recipe["method"] = {"name": llm, "media": {"image": image_method}}
    recipe["train"].update(max_steps=6, micro_batch_size=2, lr=5e-3, warmup_steps=0, scheduler="constant")
    return recipe


def _ask(photo: Path, text: str = "What is it?") -> list[dict]:
    return attach_media([{"role": "user", "content": text}], [("image", str(photo))])


def test_two_stage_training_loads_the_stage1_projector_and_loss_falls(tiny_recipe, photos, tmp_path):
    data = write_json(tmp_path / "d.json", llava_rows())
    # Stage 1 is written with the keys recipes had before branches (model.vision, method.connector): still read.
    stage1 = _vision_recipe(tiny_recipe, tmp_path, data, "stage1", llm="frozen")
    stage1["model"]["vision"] = stage1["model"].pop("media")["image"]
    stage1["method"] = {"name": "frozen", "connector": {"trainable": "full"}}
    stage1["data"]["template"] = "plain"
    result = mmtune.train(stage1)
    final = result.final_dir
    assert (final / "media.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert not (final / "model.safetensors").exists()  # the frozen LLM is not copied
    assert "media:\n    image:" in (result.run_dir / "config.yaml").read_text()  # the run records the new keys
    losses = losses_by_step(result.run_dir)
    assert losses[-1] < losses[0]

    stage2 = _vision_recipe(tiny_recipe, tmp_path, data, "stage2", connector={"trainable": "full", "lr": 1e-3},
                            encoder={"trainable": "frozen"})
    stage2["model"]["media"]["image"]["connector"]["weights"] = str(result.run_dir)
    stage2["train"]["max_steps"] = 8
    result2 = mmtune.train(stage2)
    log = (result2.run_dir / "train.log").read_text()
    assert "image connector weights loaded from" in log and "optimizer group image.connector: " in log
    assert "image.encoder: frozen" in log
    losses2 = losses_by_step(result2.run_dir)
    assert losses2[-1] < losses2[0]
    # Stage 2 starts from stage 1's projector, not from a fresh one.
    from mmtune.config.schema import ModelConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    start = open_multimodal(ModelConfig(**stage2["model"]).branches(),
                            load_causal_lm(ModelConfig(name=stage2["model"]["name"]), device_type="cpu"))
    stage1_weights = load_file(str(final / "media.safetensors"))
    torch.testing.assert_close(start.branches["image"].connector.layers[2].weight,
                               stage1_weights["image.connector.layers.2.weight"])

    model, tok = load_for_inference(str(result2.run_dir))
    saved = load_file(str(result2.final_dir / "media.safetensors"))
    torch.testing.assert_close(model.branches["image"].connector.layers[0].weight, saved["image.connector.layers.0.weight"])
    reply = generate_reply(model, tok, _ask(photos / "p0.png"), GenerationOptions(max_new_tokens=4))
    assert isinstance(reply, str)

    from mmtune.cli import main

    assert main(["chat", "--model", str(result2.run_dir), "--image", str(photos / "p1.png"), "Describe it.",
                 "--max-new-tokens", "3"]) == 0
    assert main(["chat", "--model", str(result2.run_dir), "--image", str(photos / "nope.png"), "Describe it."]) == 2


def test_multimodal_resume_matches_an_uninterrupted_run(tiny_recipe, photos, tmp_path):
    data = write_json(tmp_path / "d.json", llava_rows())
    full = _vision_recipe(tiny_recipe, tmp_path, data, "full")
    mmtune.train(full)
    part = _vision_recipe(tiny_recipe, tmp_path, data, "part")
    part["train"].update(max_steps=3, save_every=3)
    mmtune.train(part)
    part["train"].update(max_steps=6, resume="auto")
    mmtune.train(part)
    assert losses_by_step(tmp_path / "part")[3:] == pytest.approx(losses_by_step(tmp_path / "full")[3:], abs=1e-6)


def test_a_run_saved_before_branches_existed_still_loads(tiny_recipe, photos, tmp_path):
    """Earlier runs wrote vision.safetensors (connector.*, encoder.*) and a 'vision' section in mmtune.json."""
    data = write_json(tmp_path / "d.json", llava_rows())
    run = mmtune.train(_vision_recipe(tiny_recipe, tmp_path, data, "run")).run_dir
    ours, tok = load_for_inference(str(run))
    final = run / "final"
    state = load_file(str(final / "media.safetensors"))
    save_file({k.removeprefix("image."): v for k, v in state.items()}, str(final / "vision.safetensors"))
    (final / "media.safetensors").unlink()
    meta = json.loads((final / "mmtune.json").read_text())
    meta = {"base_model": meta["base_model"], "method": meta["method"], "vision": meta["media"]["image"],
            "encoder_saved": "image" in meta["encoders_saved"]}
    (final / "mmtune.json").write_text(json.dumps(meta))
    old, _ = load_for_inference(str(run))
    ids = torch.tensor([[5, *[-200] * 16, 6]])
    pixels = {"image": MediaInputs(torch.randn(1, 3, 32, 32))}
    with torch.no_grad():
        torch.testing.assert_close(old(ids, pixels).logits, ours(ids, pixels).logits)


PARTS = '''
import torch
from torch import nn
from mmtune.models.multimodal.branch import BranchPiece
from mmtune.models.multimodal.connectors import Connector
from mmtune.models.multimodal.encoders import ImageEncoder


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

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None):
        pooled = nn.functional.adaptive_avg_pool1d(features.transpose(1, 2), self.tokens).transpose(1, 2)
        return self.proj(pooled)


class Positions(BranchPiece):
    """A learned position embedding added to the encoder's tokens (as a frame position embedding would be)."""

    def __init__(self, dim, num_tokens):
        super().__init__(dim, num_tokens)
        self.table = nn.Parameter(torch.zeros(num_tokens, dim))

    def forward(self, features):
        return features + self.table
'''


def test_custom_encoder_piece_and_connector_from_a_recipe(tiny_recipe, photos, tmp_path, monkeypatch):
    (tmp_path / "my_vision.py").write_text(PARTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_json(tmp_path / "d.json", llava_rows())
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "custom", encoder={"trainable": "full"},
                            pieces={"pos": {"trainable": "full", "lr": 1e-2}})
    recipe["model"]["media"]["image"] = {
        "encoder": {"kind": "my_vision:PatchConv", "options": {"width": 24}},
        "pieces": {"pos": {"kind": "my_vision:Positions"}},
        "connector": {"kind": "my_vision:MeanPool", "options": {"tokens": 4}},
    }
    result = mmtune.train(recipe)
    losses = losses_by_step(result.run_dir)
    assert losses[-1] < losses[0]
    log = (result.run_dir / "train.log").read_text()
    assert "optimizer group image.pieces.pos: 384 params, lr 0.01" in log  # 16 tokens x 24 wide
    model, _ = load_for_inference(str(result.run_dir))
    branch = model.branches["image"]
    assert type(branch.encoder).__name__ == "PatchConv" and branch.num_tokens == 4
    saved = load_file(str(result.final_dir / "media.safetensors"))
    assert saved["image.pieces.pos.table"].abs().sum() > 0  # trained away from zeros, saved and loaded
    torch.testing.assert_close(branch.pieces["pos"].table, saved["image.pieces.pos.table"])


def _instruction_recipe(tiny_recipe, tmp_path, data) -> dict:
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "instruction")
    recipe["model"]["media"]["image"]["connector"] = {"kind": "instruction_pool", "options": {"num_queries": 4, "dim": 32}}
    return recipe


def test_a_connector_that_reads_the_instruction_trains_and_answers_from_it(tiny_recipe, photos, tmp_path):
    """instruction_pool queries the image from the user turn's text: the plumbing from data to chat."""
    data = write_json(tmp_path / "d.json", llava_rows())
    result = mmtune.train(_instruction_recipe(tiny_recipe, tmp_path, data))
    assert losses_by_step(result.run_dir)[-1] < losses_by_step(result.run_dir)[0]
    model, tok = load_for_inference(str(result.run_dir))
    connector = model.branches["image"].connector
    assert connector.wants_text and model.branches["image"].num_tokens == 4

    # The same image under two instructions gives two different image embeddings: the text reaches the connector.
    from mmtune.generation.prompts import encode_conversation, media_inputs

    embeds = []
    for question in ("What colour is it?", "How many animals are there?"):
        prompt = encode_conversation(model, tok, _ask(photos / "p0.png", question))
        inputs = media_inputs(model, tok, prompt.media)
        assert inputs["image"].text_ids is not None and inputs["image"].text_ids.shape[0] == 1
        with torch.no_grad():
            table = model.language_model.get_input_embeddings()
            embeds.append(model.branches["image"](inputs["image"], text_embeds=table(inputs["image"].text_ids)))
    assert embeds[0].shape == (1, 4, model.language_model.config.hidden_size)
    assert not torch.allclose(embeds[0], embeds[1])
    reply = generate_reply(model, tok, _ask(photos / "p1.png"), GenerationOptions(max_new_tokens=3))
    assert isinstance(reply, str)

    # mmtune eval on held-out LLaVA rows: the same loss mask, the images through the same branch.
    from mmtune.evaluation import evaluate

    held = [{**row, "image": f"images/{row['image']}"} for row in llava_rows(4) if "image" in row]
    report = evaluate(model, tok, write_json(tmp_path / "held.json", held), opts=GenerationOptions(max_new_tokens=3),
                      progress=False)
    assert report.samples == 3 and report.metrics["loss"]["tokens"] > 0
    assert report.metrics["loss"]["loss"] == report.metrics["loss"]["loss"]  # finite
    assert all(isinstance(r["prediction"], str) for r in report.records)


def _rows_with_a_truncated_photo(folder: Path) -> list[dict]:
    """LLaVA rows whose row 2 shows broken.jpg: a JPEG whose header is valid and whose body stops half-way."""
    import numpy as np
    from PIL import Image

    full = folder / "full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=95)
    raw = full.read_bytes()
    (folder / "broken.jpg").write_bytes(raw[: len(raw) // 2])
    with Image.open(folder / "broken.jpg") as im:
        assert im.size == (64, 64)  # the header still reads: the data check passes it
    rows = llava_rows()
    rows[1]["image"] = "broken.jpg"
    return rows


def test_an_image_truncated_past_its_header_is_one_line_or_a_counted_skip(tiny_recipe, photos, tmp_path):
    data = write_json(tmp_path / "d.json", _rows_with_a_truncated_photo(photos))
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "bad")
    recipe["data"]["num_workers"] = 2
    with pytest.raises(DataError) as err:
        mmtune.train(recipe)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and err.value.reason == "unreadable image"
    assert f"{data}: row 2: field 'image': cannot decode image" in message and "broken.jpg" in message
    assert "worker" not in message.lower()

    recipe["output_dir"] = str(tmp_path / "skipping")
    recipe["data"]["on_bad_sample"] = "skip"
    result = mmtune.train(recipe)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["skipped_while_batching"] == {"unreadable image": 1}  # one sample, however often it was met
    log = (result.run_dir / "train.log").read_text()
    assert "1 sample(s) skipped while building batches: unreadable image" in log and "row 2" in log
    assert all(map(lambda x: x == x, losses_by_step(result.run_dir)))  # finite losses, the run went on


def test_the_command_line_reports_a_truncated_image_in_one_line(tiny_recipe, photos, tmp_path):
    import yaml

    data = write_json(tmp_path / "d.json", _rows_with_a_truncated_photo(photos))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_vision_recipe(tiny_recipe, tmp_path, data, "cli")))
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "train", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mmtune: error:")]
    assert len(errors) == 1 and "row 2: field 'image': cannot decode image" in errors[0]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr


def test_every_sample_skipped_while_batching_stops_with_one_line_instead_of_looping(tiny_recipe, photos, tmp_path):
    rows = _rows_with_a_truncated_photo(photos)
    rows = [{**row, "image": "broken.jpg"} for row in rows if "image" in row]  # every sample's image is broken
    data = write_json(tmp_path / "d.json", rows)
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "all-bad")
    recipe["data"]["on_bad_sample"] = "skip"
    with pytest.raises(DataError, match="no trainable sample in .* windows in a row .* unreadable image"):
        mmtune.train(recipe)


def test_a_multimodal_checkpoint_from_before_branches_is_refused_in_one_line(tiny_recipe, photos, tmp_path):
    from mmtune.errors import TrainingError

    data = write_json(tmp_path / "d.json", llava_rows())
    recipe = _vision_recipe(tiny_recipe, tmp_path, data, "old")
    recipe["train"].update(max_steps=2, save_every=1)
    mmtune.train(recipe)
    checkpoint = tmp_path / "old" / "checkpoints" / "step-1"
    state = load_file(str(checkpoint / "trainable.safetensors"))  # as such a checkpoint named its tensors
    save_file({k.replace("lm.branches.image.", "lm."): v for k, v in state.items()},
              str(checkpoint / "trainable.safetensors"))
    (checkpoint / "optimizer_params.json").unlink()
    recipe["train"].update(max_steps=3, resume=str(checkpoint))
    with pytest.raises(TrainingError, match="written before media branches.*cannot be resumed"):
        mmtune.train(recipe)
