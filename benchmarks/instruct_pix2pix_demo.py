#!/usr/bin/env python
"""Demonstration: a tiny InstructPix2Pix learns to follow edit instructions on a CPU; a blanked control does not.

No pretrained Stable Diffusion exists offline, so the model is ``tiny-stable-diffusion`` (random weights, UNet
widened to 8 input channels) trained from scratch on ``mmtune data synth edits`` (32 px scenes of 2-3 shapes;
"make the circle red": recolour one named shape; every input admits ~9 such edits, so only the instruction says
which). Two runs with the same data order, steps and learning rate:

- ``edits``: the instructions as written;
- ``edits-blank``: every instruction replaced by one neutral text ("edit the image"), in training and in
  evaluation: the model sees the same images and learns which edits an image admits, never which one is asked.

Figures, for the untrained model and after training, on the held-out split (inputs never seen in training):

- **held-out denoising loss**: the training objective on held-out triplets with fixed noise and timesteps, and
  the same with every triplet under another row's instruction (it rises only if the model reads instructions);
- **conditioning effect**: ||eps(z, c_I, c_T) - eps(z, 0, 0)|| / ||eps(z, 0, 0)|| at fixed noisy latents (how
  far instruction and image move the prediction from the unconditional one), and the text's own share
  ||eps(z, c_I, c_T) - eps(z, c_I, 0)|| / ||eps(z, c_I, 0)||;
- **edit accuracy**: the pipeline edits each held-out input (two-scale guidance, fixed seed); the output latents
  are compared with the VAE latents of every edit the input admits, and the nearest must be the one asked.
  Chance (an editor that ignores the instruction) is the mean of 1 / candidates, written below. The read-out
  is in latent space because the tiny VAE is random: its encoder is a fixed random map (made nearly
  deterministic, see ``mmtune.models.diffusion.tiny``), its decoder cannot draw the result as an image.

Results go to ``OUT/results.json`` and ``OUT/results.md``::

    python benchmarks/instruct_pix2pix_demo.py --out runs/ip2p-demo
    python benchmarks/instruct_pix2pix_demo.py --out runs/ip2p-demo --steps 200 --train 500 --heldout 64
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtune.models.diffusion.tiny import TINY_SD_ALIAS  # noqa: E402


def make_data(out: Path, train: int, heldout: int, seed: int) -> dict:
    from mmtune.datagen.synth import generate_synth

    if not (out / "edits" / "synth.json").is_file():
        generate_synth("edits", out / "edits", train=train, heldout=heldout, seed=seed, question_types="color",
                       blank=out / "edits-blank", overwrite=True, progress=False)
    return json.loads((out / "edits" / "synth.json").read_text())


def recipe(out: Path, run: str, *, steps: int, batch: int, lr: float, seed: int) -> dict:
    return {
        "task": "edit", "output_dir": str(out / "runs" / run), "model": {"name": TINY_SD_ALIAS},
        "data": {"datasets": [{"card": str(out / run / "train.yaml")}], "resolution": 32, "resize_range": [32, 32],
                 "random_flip": True, "num_workers": 1},
        "method": {"name": "full", "conditioning_dropout": 0.05, "ema": {"decay": 0.999}},
        "train": {"seed": seed, "max_steps": steps, "micro_batch_size": batch, "lr": lr, "scheduler": "constant",
                  "warmup_steps": 0, "log_every": 25, "progress": False, "tensorboard": False},
    }


def held_out_rows(out: Path, run: str, limit: int) -> list[dict]:
    rows = [json.loads(line) for line in (out / run / "heldout" / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        row["folder"] = str(out / run / "heldout")
    return rows[:limit]


def pixels(images) -> torch.Tensor:
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1


def candidate_latents(pipe, row: dict, colors: tuple[str, ...]) -> tuple[torch.Tensor, int]:
    """Scaled VAE latents of every edit of the row's kind its input admits, and the index of the one asked."""
    from types import SimpleNamespace

    from mmtune.datagen.synth.edits import apply_edit, candidates
    from mmtune.datagen.synth.shapes import render

    scene = row["scene"]
    edits = candidates(scene, row["edit_type"], SimpleNamespace(colors=colors))  # what it reads of a spec
    images = [render(apply_edit(scene, e)) for e in edits]
    asked = next(i for i, e in enumerate(edits) if e.target == row["target"] and e.value == row["answer"])
    with torch.no_grad():
        latents = pipe.vae.encode(pixels(images)).latent_dist.mode() * pipe.vae.config.scaling_factor
    return latents, asked


def edit_accuracy(pipe, rows: list[dict], *, colors: tuple[str, ...], text_guidance: float, image_guidance: float,
                  steps: int, seed: int, batch: int = 16) -> dict:
    from PIL import Image

    hits, chance = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        images = [Image.open(Path(r["folder"]) / r["input_image"]).convert("RGB") for r in chunk]
        generator = torch.Generator().manual_seed(seed + start)
        latents = pipe([r["edit_prompt"] for r in chunk], image=images, num_inference_steps=steps,
                       guidance_scale=text_guidance, image_guidance_scale=image_guidance, generator=generator,
                       output_type="latent").images
        for row, latent in zip(chunk, latents):
            cands, asked = candidate_latents(pipe, row, colors)
            nearest = int(((cands - latent[None]) ** 2).flatten(1).sum(1).argmin())
            hits.append(nearest == asked)
            chance.append(1 / len(cands))
    return {"accuracy": float(np.mean(hits)), "chance": float(np.mean(chance)), "n": len(hits)}


def conditioning_effect(pipe, rows: list[dict], *, seed: int) -> dict:
    """How far (instruction, image) and the instruction alone move the noise prediction, at fixed noisy latents."""
    from PIL import Image

    from mmtune.data.edit_triplets import tokenize_prompts

    g = torch.Generator().manual_seed(seed)
    inputs = pixels([Image.open(Path(r["folder"]) / r["input_image"]) for r in rows])
    edited = pixels([Image.open(Path(r["folder"]) / r["edited_image"]) for r in rows])
    with torch.no_grad():
        vae = pipe.vae
        target = vae.encode(edited).latent_dist.mode() * vae.config.scaling_factor
        image = vae.encode(inputs).latent_dist.mode()
        t = torch.randint(100, 900, (len(rows),), generator=g)
        from diffusers import DDPMScheduler

        ddpm = DDPMScheduler.from_config(pipe.scheduler.config)
        z = ddpm.add_noise(target, torch.randn(target.shape, generator=g), t)
        enc = pipe.text_encoder
        text = enc(torch.from_numpy(tokenize_prompts(pipe.tokenizer, [r["edit_prompt"] for r in rows])))[0]
        null = enc(torch.from_numpy(tokenize_prompts(pipe.tokenizer, [""] * len(rows))))[0]
        full = pipe.unet(torch.cat([z, image], 1), t, text).sample
        image_only = pipe.unet(torch.cat([z, image], 1), t, null).sample
        uncond = pipe.unet(torch.cat([z, torch.zeros_like(image)], 1), t, null).sample

    def rel(a, b):
        return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).mean())

    return {"full_vs_uncond": rel(full, uncond), "text_vs_image_only": rel(full, image_only)}


def held_out_loss(pipe, rows: list[dict], *, seed: int, shuffle_instructions: bool = False) -> float:
    """The training objective (no conditioning dropout) on held-out triplets, fixed noise and timesteps.

    ``shuffle_instructions``: each triplet under another row's instruction (a fixed derangement): if the model
    reads the instruction, its loss rises; if it ignores it, nothing changes.
    """
    from PIL import Image

    from mmtune.data.edit_triplets import EditBatch, tokenize_prompts
    from mmtune.models.diffusion.objective import EditObjective, StepDraws

    from diffusers import DDPMScheduler

    g = torch.Generator().manual_seed(seed)
    null = torch.from_numpy(tokenize_prompts(pipe.tokenizer, [""])[0])
    instructions = [r["edit_prompt"] for r in rows]
    if shuffle_instructions:
        instructions = instructions[1:] + instructions[:1]
    objective = EditObjective(pipe.unet, pipe.vae, pipe.text_encoder, DDPMScheduler.from_config(pipe.scheduler.config),
                              null_ids=null, conditioning_dropout=0.0)
    batch = EditBatch(pixels([Image.open(Path(r["folder"]) / r["input_image"]) for r in rows]),
                      pixels([Image.open(Path(r["folder"]) / r["edited_image"]) for r in rows]),
                      torch.from_numpy(tokenize_prompts(pipe.tokenizer, instructions)))
    latent_shape = (len(rows), 4, 16, 16)
    draws = StepDraws(noise=torch.randn(latent_shape, generator=g), timesteps=torch.randint(0, 1000, (len(rows),),
                                                                                          generator=g))
    with torch.no_grad():
        torch.manual_seed(seed)
        loss_sum, n = objective(batch, draws)
    return float(loss_sum / n)


def untrained_pipeline():
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from mmtune.config.schema import DiffusionModelConfig
    from mmtune.models.diffusion.parts import inference_scheduler_of, open_edit_parts

    parts = open_edit_parts(DiffusionModelConfig(name=TINY_SD_ALIAS))
    return StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet.eval(),
        scheduler=inference_scheduler_of(parts.source), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def measure(pipe, rows: list[dict], args) -> dict:
    pipe.set_progress_bar_config(disable=True)
    return {
        "held_out_loss": held_out_loss(pipe, rows, seed=args.seed),
        "held_out_loss_shuffled": held_out_loss(pipe, rows, seed=args.seed, shuffle_instructions=True),
        **conditioning_effect(pipe, rows[:64], seed=args.seed),
        **edit_accuracy(pipe, rows, colors=args.colors, text_guidance=args.text_guidance,
                        image_guidance=args.image_guidance, steps=args.sample_steps, seed=args.seed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ip2p-demo"))
    parser.add_argument("--runs", nargs="+", default=["edits", "edits-blank"])
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--heldout", type=int, default=200)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--text-guidance", type=float, default=7.5)
    parser.add_argument("--image-guidance", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="measure a run's existing final/ instead of training it")
    args = parser.parse_args()

    import mmtune
    from mmtune.models.families.edit_diffusion import load_pipeline

    args.out.mkdir(parents=True, exist_ok=True)
    synth = make_data(args.out, args.train, args.heldout, args.seed)
    args.colors = tuple(synth["parameters"]["colors"].split(","))
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results["setup"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {
        "synth_chance": synth["chance"]}
    for run in args.runs:
        rows = held_out_rows(args.out, run, args.heldout)
        t0 = time.perf_counter()
        before = measure(untrained_pipeline(), rows, args)
        final = args.out / "runs" / run / "final"
        if not (args.reuse and final.is_dir()):
            final = mmtune.train(recipe(args.out, run, steps=args.steps, batch=args.batch, lr=args.lr,
                                        seed=args.seed)).final_dir
        train_s = time.perf_counter() - t0
        after = measure(load_pipeline(final), rows, args)
        results[run] = {"untrained": before, "trained": after, "steps": args.steps, "train_and_eval_s": round(train_s)}
        print(run, json.dumps(results[run], indent=1), flush=True)
        results_file.write_text(json.dumps(results, indent=2))
    lines = ["| run | held-out loss (untrained -> trained) | trained, instructions shuffled | effect of (image, text) | "
             "effect of text | edit accuracy | chance |", "|---|---|---|---|---|---|---|"]
    for run in args.runs:
        r = results[run]
        u, t = r["untrained"], r["trained"]
        lines.append(f"| {run} | {u['held_out_loss']:.4f} -> {t['held_out_loss']:.4f} | "
                     f"{t['held_out_loss_shuffled']:.4f} | "
                     f"{u['full_vs_uncond']:.3f} -> {t['full_vs_uncond']:.3f} | "
                     f"{u['text_vs_image_only']:.3f} -> {t['text_vs_image_only']:.3f} | "
                     f"{u['accuracy']:.3f} -> {t['accuracy']:.3f} (n={t['n']}) | {t['chance']:.3f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
