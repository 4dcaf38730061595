"""``task: edit`` end to end on a tiny random Stable Diffusion: it learns, resumes exactly (EMA included), writes
an InstructPix2Pix pipeline, and the published recipes stop in one line without their weights."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmtune
from tests.e2e.test_cli import mmtune_cmd

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> Path:
    """12 photo triplets (scikit-image) at 40 px: flipped, grayscale or darkened, each with its instruction."""
    from skimage import data

    root = tmp_path_factory.mktemp("triplets")
    edits = {"flip it left to right": lambda a: a[:, ::-1], "make it black and white":
             lambda a: np.repeat(a.mean(2, keepdims=True), 3, 2).astype(np.uint8),
             "make it darker": lambda a: (a * 0.4).astype(np.uint8)}
    rows = []
    for i, photo in enumerate([data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]):
        image = np.asarray(Image.fromarray(photo).resize((40, 40)))
        Image.fromarray(image).save(root / f"{i}.png")
        for j, (prompt, edit) in enumerate(edits.items()):
            Image.fromarray(np.ascontiguousarray(edit(image))).save(root / f"{i}_{j}.png")
            rows.append({"input_image": f"{i}.png", "edit_prompt": prompt, "edited_image": f"{i}_{j}.png"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "metadata.jsonl"


def recipe(tmp_path: Path, sd: Path, data: Path, name: str, *, method: dict | None = None, **train) -> dict:
    return {"task": "edit", "output_dir": str(tmp_path / name), "model": {"name": str(sd)},
            "data": {"datasets": [{"path": str(data), "format": "edit_triplets"}], "resolution": 32,
                     "resize_range": [32, 40], "val_fraction": 0.25, "num_workers": 1},
            "method": {"name": "full", "ema": {"decay": 0.9}, **(method or {})},
            "train": {"max_steps": 6, "micro_batch_size": 3, "grad_accum_steps": 1, "lr": 1e-3, "warmup_steps": 0,
                      "scheduler": "constant", "progress": False, "tensorboard": False, **train}}


def records(run: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for rec in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        out.setdefault(rec["step"], {}).update(rec)
    return out


def test_a_tiny_edit_run_learns_and_writes_an_instructpix2pix_pipeline(tiny_sd_dir, triplets, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    result = mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "run", max_steps=40, eval_every=5))
    metrics = records(result.run_dir)
    evals = [metrics[s]["eval_loss"] for s in sorted(metrics) if "eval_loss" in metrics[s]]
    assert np.mean(evals[-2:]) < 0.9 * evals[0], evals  # the held-out denoising loss falls
    assert all("samples_per_s" in metrics[s] for s in metrics if "loss" in metrics[s])
    assert metrics[40]["targets_seen"] == 40 * 3  # targets are samples (9 train triplets, 3 per step)
    meta = json.loads((result.final_dir / "mmtune.json").read_text())
    assert meta["family"] == "edit_diffusion" and meta["ema"] is True and meta["method"] == "full"
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(result.final_dir)
    assert pipe.unet.config.in_channels == 8
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["widened_conv_in"] is True and summary["targets_seen"] == 120


def test_an_interrupted_edit_run_resumes_exactly_ema_included(tiny_sd_dir, triplets, tmp_path, monkeypatch):
    """Crops, flips, noise, timesteps and dropout are drawn again as they were: the same losses and final EMA."""
    ref = mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "ref", save_every=100))
    from mmtune.training import loop

    real_log = loop.MetricsLogger.log

    def stop_after_three(self, record):
        real_log(self, record)
        if record.get("step") == 3 and "loss" in record:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop.MetricsLogger, "log", stop_after_three)
        with pytest.raises(KeyboardInterrupt):
            mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "cut"))
    assert (tmp_path / "cut" / "checkpoints" / "step-3" / "task_state.pt").is_file()
    resumed = mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "cut", resume="auto"))
    a, b = records(ref.run_dir), records(resumed.run_dir)
    for step in (4, 5, 6):
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], abs=1e-6), step
    from safetensors.torch import load_file

    final_a = load_file(ref.final_dir / "unet" / "diffusion_pytorch_model.safetensors")
    final_b = load_file(resumed.final_dir / "unet" / "diffusion_pytorch_model.safetensors")
    for name in final_a:
        torch.testing.assert_close(final_b[name], final_a[name], atol=1e-6, rtol=0)
    ema = torch.load(tmp_path / "cut" / "checkpoints" / "step-3" / "task_state.pt", weights_only=True)
    assert ema["optimization_step"] == 3


def test_lora_trains_the_attention_and_conv_in_and_saves_diffusers_lora_weights(tiny_sd_dir, triplets, tmp_path):
    from mmtune.models.families.edit_diffusion import load_pipeline

    result = mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "lora", max_steps=3,
                                 method={"name": "lora", "lora": {"rank": 4}, "ema": None}))
    assert (result.final_dir / "pytorch_lora_weights.safetensors").is_file()
    from safetensors.torch import load_file

    lora = load_file(result.final_dir / "pytorch_lora_weights.safetensors")
    assert lora and all("lora" in k for k in lora) and any("to_q" in k for k in lora)
    base = load_file(result.final_dir / "unet" / "diffusion_pytorch_model.safetensors")
    assert not any("lora" in k for k in base)
    assert torch.count_nonzero(base["conv_in.weight"][:, 4:]) > 0  # the image channels trained
    pipe = load_pipeline(result.final_dir)
    assert pipe.unet.config.in_channels == 8


@pytest.mark.parametrize("name", ["instruct_pix2pix", "instruct_pix2pix_diffusers"])
def test_the_published_edit_recipes_without_weights_stop_in_one_line_naming_the_model(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*mmtune_cmd(), "train", str(REPO / "configs" / f"{name}.yaml"),
                           f"output_dir={tmp_path / 'run'}"], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in proc.stderr.strip().splitlines()[-1]


def test_data_inspect_shows_an_edit_recipes_triplets_and_crops(triplets):
    from mmtune.config.loader import load_recipe
    from mmtune.data.inspect import inspect_data

    recipe = load_recipe(REPO / "configs" / "instruct_pix2pix_tiny.yaml",
                         [f"data.datasets.0.path={triplets}", "data.datasets.0.format=edit_triplets",
                          "data.datasets.0.card=null"])
    text = inspect_data(recipe, samples=2)
    assert f"{triplets}: 12 triplet(s)" in text
    assert text.count("== sample") == 2 and "instruction: " in text and "(40x40)" in text
    assert "train 10  validation 2" in text  # val_fraction 0.2 of the recipe
    assert "training crops: 32 px of a 32-36 px square resize, flipped" in text


def test_gradient_checkpointing_changes_memory_not_the_result(tiny_sd_dir, triplets, tmp_path):
    plain = records(mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "plain", max_steps=2)).run_dir)
    checkpointed = records(mmtune.train(recipe(tmp_path, tiny_sd_dir, triplets, "ckpt", max_steps=2,
                                               gradient_checkpointing=True)).run_dir)
    for step in (1, 2):
        assert checkpointed[step]["loss"] == pytest.approx(plain[step]["loss"], abs=1e-5)
        assert checkpointed[step]["grad_norm"] == pytest.approx(plain[step]["grad_norm"], rel=1e-4)


def test_a_tiny_edit_run_trains_on_the_shipped_card(tmp_path, tiny_sd_dir, one_torch_thread):
    result = mmtune.train({
        "task": "edit", "output_dir": str(tmp_path / "run"), "model": {"name": str(tiny_sd_dir)},
        "data": {"datasets": [{"card": "mmtune-edits"}], "resolution": 32, "val_fraction": 0.2, "num_workers": 0},
        "method": {"name": "full", "ema": None},
        "train": {"max_steps": 3, "micro_batch_size": 4, "lr": 1e-4, "warmup_steps": 0, "eval_every": 3,
                  "progress": False, "tensorboard": False}})
    assert result.steps == 3 and math.isfinite(result.final_loss)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["data"] == ["mmtune-edits: 20 triplet(s)"] and summary["targets_seen"] == 12
