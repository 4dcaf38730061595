"""An image-editing run, exported to diffusers, predicts and edits as mmtune does; ``mmtune edit`` end to end.

Two tiny runs train in this process: one full (its EMA on, so ``final/``
holds the EMA weights) and one LoRA. The reference for "mmtune's model" is the
objective the loop trained, caught as the task writes ``final/`` (after the
EMA weights are copied in; a LoRA run's adapter unfused): nothing of
``final/``, of loading or of the export touches it. Each run is exported as
``mmtune export`` does (LoRA merged, and for the LoRA run also kept as diffusers
LoRA weights), and opened the way a diffusers user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

INSTRUCTION = "make it snowy"
LORA = {"rank": 4, "alpha": 8}
# alpha != rank: final/'s LoRA file must carry the adapter's config, or diffusers reloads it with alpha = rank
# (at half the strength it trained with).
EXPORTS = [("full", "merged"), ("lora", "merged"), ("lora", "kept")]


@dataclass
class TrainedRun:
    dir: Path
    objective: torch.nn.Module
    """The trained objective (UNet, VAE, text encoder) as it was when the task wrote final/."""


class CatchObjective:
    """The edit task, with each run's trained objective kept as it writes ``final/``."""

    def __init__(self, task) -> None:
        self.task, self.objective = task, None

    def setup(self, recipe, runtime):
        run = self.task.setup(recipe, runtime)
        write = run.save_final

        def save_final(target, trained):
            write(target, trained)
            self.objective = trained

        run.save_final = save_final
        return run


def write_triplets(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}_in.png")
        Image.fromarray(255 - pixels).save(folder / f"{i}_out.png")
        rows.append({"input_image": f"{i}_in.png", "edit_prompt": "invert the colours", "edited_image": f"{i}_out.png"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "metadata.jsonl"


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    from mmtune.models.diffusion.tiny import build_tiny_stable_diffusion

    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("tiny-sd") / "sd")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sd_dir, one_torch_thread) -> dict[str, TrainedRun]:
    from mmtune.config.loader import load_recipe
    from mmtune.training import tasks
    from mmtune.training.loop import train

    root = tmp_path_factory.mktemp("edit-runs")
    metadata = write_triplets(root / "data")
    methods = {"full": ({"name": "full"}, 1e-3), "lora": ({"name": "lora", "lora": LORA}, 1e-2)}
    trained = {}
    with pytest.MonkeyPatch.context() as patch:
        catch = CatchObjective(tasks.TASKS["edit"])
        patch.setitem(tasks.TASKS, "edit", catch)
        for kind, (method, lr) in methods.items():
            recipe = {"task": "edit", "output_dir": str(root / kind), "model": {"name": str(sd_dir)},
                      "data": {"datasets": [{"path": str(metadata), "format": "edit_triplets"}], "resolution": 32,
                               "num_workers": 0},
                      "method": method,
                      "train": {"max_steps": 2, "micro_batch_size": 2, "lr": lr, "warmup_steps": 0,
                                "scheduler": "constant", "progress": False, "tensorboard": False}}
            (root / f"{kind}.yaml").write_text(yaml.safe_dump(recipe))
            train(load_recipe(root / f"{kind}.yaml"))
            trained[kind] = TrainedRun(root / kind, catch.objective.eval())
    return trained


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory) -> dict[tuple[str, str], Path]:
    from mmtune import cli

    root = tmp_path_factory.mktemp("edit-exports")
    out = {}
    for kind, lora in EXPORTS:
        target = root / f"{kind}-{lora}"
        assert cli.main(["export", str(runs[kind].dir), str(target), *(["--keep-lora"] if lora == "kept" else [])]) == 0
        out[kind, lora] = target
    return out


def open_export(path: Path, lora: str):
    """What a diffusers user does with the export (and, for a kept LoRA, ``load_lora_weights``)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(path)
    if lora == "kept":
        pipe.load_lora_weights(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def base(sd_dir):
    """The untrained parts: the widened UNet training started from, the tokenizer."""
    from mmtune.config.schema import DiffusionModelConfig
    from mmtune.models.diffusion.parts import open_edit_parts

    return open_edit_parts(DiffusionModelConfig(name=str(sd_dir)))


def unet_inputs(objective, tokenizer):
    """Noisy + image latents, two timesteps, and two instructions encoded by the run's text encoder."""
    from mmtune.data.edit_triplets import tokenize_prompts

    g = torch.Generator().manual_seed(0)
    ids = torch.from_numpy(np.asarray(tokenize_prompts(tokenizer, [INSTRUCTION, "turn it into a watercolour"])))
    with torch.no_grad():
        text = objective.text_encoder(ids)[0]
    return torch.randn(2, 8, 16, 16, generator=g), torch.tensor([20, 700]), text


@pytest.mark.parametrize("kind, lora", EXPORTS)
def test_the_exported_unet_predicts_the_noise_of_the_trained_one(runs, exports, base, kind, lora):
    objective = runs[kind].objective
    inputs = unet_inputs(objective, base.tokenizer)
    pipe = open_export(exports[kind, lora], lora)
    assert (exports[kind, lora] / "pytorch_lora_weights.safetensors").is_file() == (lora == "kept")
    assert not (exports[kind, lora] / "mmtune.json").exists()
    with torch.no_grad():
        trained = objective.unet(*inputs).sample
        exported = pipe.unet(*inputs).sample
        untrained = base.unet(*inputs).sample
        if kind == "lora":
            objective.unet.disable_adapters()
            without_lora = objective.unet(*inputs).sample
            objective.unet.enable_adapters()
    gap = (exported - trained).abs().max().item()
    print(f"{kind} ({lora}): max |exported - trained| = {gap:.2e}; training moved it by "
          f"{(trained - untrained).abs().max().item():.2e}")
    assert gap <= 1e-4
    assert (trained - untrained).abs().max() > 1e-2  # the comparison sees what training changed
    if kind == "lora":
        assert (trained - without_lora).abs().max() > 1e-2  # and what the LoRA itself adds


@pytest.fixture(scope="module")
def odd_png(tmp_path_factory) -> Path:
    """An input whose sides are not multiples of the VAE's factor."""
    from PIL import Image

    path = tmp_path_factory.mktemp("edit-input") / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (37, 45, 3), dtype=np.uint8)).save(path)
    return path


def pipeline_edit(pipe, image, options, output_type: str):
    """The exported pipeline called directly, as diffusers documents it, with mmtune's settings."""
    return pipe(INSTRUCTION, image=image, num_inference_steps=options.steps, guidance_scale=options.text_guidance,
                image_guidance_scale=options.image_guidance, output_type=output_type,
                generator=torch.Generator().manual_seed(options.seed)).images[0]


@pytest.mark.parametrize("kind, lora", EXPORTS)
def test_mmtune_edit_and_the_exported_pipeline_give_the_same_image(runs, exports, odd_png, kind, lora):
    from PIL import Image

    from mmtune.generation.edit import EditOptions, edit_pixels

    options = EditOptions(steps=3, seed=7, progress=False)
    ours = edit_pixels(runs[kind].dir, odd_png, INSTRUCTION, options)
    theirs = pipeline_edit(open_export(exports[kind, lora], lora), Image.open(odd_png), options, "np")
    gap = float(np.abs(ours - theirs).max())
    print(f"{kind} ({lora}): max |mmtune edit - exported pipeline| = {gap:.2e} (pixels in [0, 1])")
    assert ours.shape == theirs.shape and gap <= 1e-3
    other_seed = edit_pixels(runs[kind].dir, odd_png, INSTRUCTION, EditOptions(steps=3, seed=8, progress=False))
    assert np.abs(other_seed - ours).max() > 1e-2  # the seed is what makes them agree


def run_mmtune(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmtune.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def test_the_edit_command_writes_the_edited_image(runs, exports, odd_png, tmp_path):
    from PIL import Image

    from mmtune.generation.edit import EditOptions, fit_image

    out = tmp_path / "edited" / "out.png"
    proc = run_mmtune("edit", "--model", str(runs["lora"].dir), "--image", str(odd_png), INSTRUCTION,
                      "--steps", "2", "--seed", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2/2" in proc.stderr  # the progress bar over the denoising steps
    pipe = open_export(exports["lora", "merged"], "merged")
    written = Image.open(out)
    assert written.size == fit_image(Image.open(odd_png), None, pipe.vae_scale_factor).size
    assert written.size != Image.open(odd_png).size  # 45 x 37 is not a multiple of the factor
    reference = pipeline_edit(pipe, Image.open(odd_png), EditOptions(steps=2, seed=3), "pil")
    levels = np.abs(np.asarray(written, dtype=int) - np.asarray(reference, dtype=int))
    assert levels.max() <= 1  # 8-bit rounding of values that agree within 1e-3


def one_line_error(capsys, *argv: str) -> str:
    from mmtune import cli

    capsys.readouterr()
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmtune: error: ") and "\n" not in err, err
    return err


def test_bad_inputs_and_wrong_models_are_one_line(runs, exports, odd_png, sd_dir, tiny_llama_dir, tmp_path, capsys):
    from mmtune.errors import ModelError
    from mmtune.models.run_outputs import load_for_inference

    edit_run, out = str(runs["full"].dir), str(tmp_path / "out.png")
    missing = one_line_error(capsys, "edit", "--model", edit_run, "--image", str(tmp_path / "nope.png"), "x",
                             "--out", out)
    assert "not found" in missing and "nope.png" in missing
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    assert "cannot read image" in one_line_error(capsys, "edit", "--model", edit_run, "--image",
                                                 str(tmp_path / "garbage.png"), "x", "--out", out)
    (tmp_path / "truncated.png").write_bytes(odd_png.read_bytes()[:200])
    assert "truncated.png" in one_line_error(capsys, "edit", "--model", edit_run, "--image",
                                             str(tmp_path / "truncated.png"), "x", "--out", out)
    plain_sd = one_line_error(capsys, "edit", "--model", str(sd_dir), "--image", str(odd_png), "x", "--out", out)
    assert "StableDiffusionPipeline, not an InstructPix2Pix editing model" in plain_sd
    chat_model = one_line_error(capsys, "edit", "--model", str(tiny_llama_dir), "--image", str(odd_png), "x",
                                "--out", out)
    assert "not an image-editing model; use mmtune chat" in chat_model
    assert "unknown image extension" in one_line_error(capsys, "edit", "--model", edit_run, "--image", str(odd_png),
                                                       "x", "--out", str(tmp_path / "out.xyz"))
    assert not (tmp_path / "out.png").exists()

    # the reverse: an editing model where a chat model is expected
    for model in (edit_run, str(exports["lora", "kept"])):
        refused = one_line_error(capsys, "chat", "--model", model, "hello")
        assert "an image-editing model (InstructPix2Pix)" in refused and "use mmtune edit" in refused
        with pytest.raises(ModelError, match="image-editing model"):
            load_for_inference(model)

    # export: an editing run has one format, diffusers, which holds nothing else
    assert "exports only as a diffusers pipeline" in one_line_error(capsys, "export", edit_run,
                                                                    str(tmp_path / "x"), "--format", "hf")
    assert "only an image-editing run" in one_line_error(capsys, "export", str(tiny_llama_dir), str(tmp_path / "y"),
                                                         "--format", "diffusers")
    assert "--keep-lora" in one_line_error(capsys, "export", str(tiny_llama_dir), str(tmp_path / "z"), "--keep-lora")
    assert not any((tmp_path / name).exists() for name in "xyz")
