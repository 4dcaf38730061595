#!/usr/bin/env python
"""Benchmark: mmtune's InstructPix2Pix training (``task: edit``) vs a plain loop after diffusers' example.

The same Stable Diffusion parts on both sides (a tiny random one written to a
temporary directory, or ``--sd DIR``), ``conv_in`` widened from 4 to 8 input
channels with the original weights copied and the new channels at zero, the
UNet trained fully with EMA, the VAE and text encoder frozen; the same
triplets (synthetic images with deterministic edits, written once), micro-batch
size, accumulation, step count, lr, weight decay, clipping and seed.

* **mmtune**: ``mmtune.train(recipe)`` on a generated ``task: edit`` recipe:
  the real loop with its DataLoader workers, checkpoints and eval off.
* **baseline**: a plain loop written here that follows the steps of diffusers'
  ``examples/instruct_pix2pix/train_instruct_pix2pix.py``: an accelerate
  ``Accelerator`` with gradient accumulation, a DataLoader over batches of the
  same triplets preprocessed in the example's order (resize, one random crop
  and flip for both images, [-1, 1]; instructions padded to the tokenizer's 77
  tokens), and per micro-batch: VAE-encode the edited image (sample x scaling
  factor), noise, timesteps, ``add_noise``, text encoder, the VAE mode of the
  input image, conditioning dropout (text dropped for r < 2p, image for
  p <= r < 3p), concatenation, MSE to the scheduler's target, backward under
  ``accelerator.accumulate``, clipping, AdamW, and an EMA step per update.

Checks, printed with the figures measured in this run:

(a) **the same first-step loss**: mmtune's ``EditObjective`` (built by the edit
    task itself) and the baseline's step on the same batch, the same noise,
    timesteps and dropout draws (``StepDraws``) and the same VAE sample, within
    1e-5 (fp32), with random draws and with draws that hit each dropout case;
    the gradients of the two are compared too;
(b) **steps/s** of mmtune's full training path vs the baseline (target >= 1.0x),
    timed by the wall clock at the end of every optimizer step on both sides
    (data, forward, backward, update, EMA, logging), warm-up steps excluded;
    the sides run ``--rounds`` times, alternating, and steps/s is given on the
    total timed time and on the median step, with the CPU seconds per step of
    each side's process and workers (a figure other processes on the machine
    barely move, unlike wall time);
(c) **peak memory**: each side runs in its own subprocess; peak RSS on CPU (the
    high-water mark since the shared libraries were imported, and the largest
    DataLoader worker), ``torch.cuda.max_memory_allocated`` on GPU.

A script that prints figures, not a test::

    python benchmarks/bench_instruct_pix2pix.py                                  # CPU: 64 px, batch 4
    python benchmarks/bench_instruct_pix2pix.py --steps 60 --accum 2 --json ip2p.json
    python benchmarks/bench_instruct_pix2pix.py --device cuda --sd /path/to/sd15 --resolution 256 --batch 16

On a GPU the recipe's ``train.mixed_precision`` (``--mixed-precision``, default
bf16 where supported) sets both sides' precision; the baseline casts the VAE and
text encoder to it, as the example does. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import finish, loadavg, peak_rss_mib, run_side, spread  # noqa: E402
from report import print_table  # noqa: E402

SEED = 42
LR = 1e-4  # the example's default learning rate
WEIGHT_DECAY = 1e-2  # the example's default AdamW weight decay (mmtune's recipe is given the same)
BETAS = (0.9, 0.999)
MAX_GRAD_NORM = 1.0
DROPOUT = 0.05  # conditioning dropout p, as published
EMA_DECAY = 0.9999
PARITY_TOLERANCE = 1e-5
EDITS = ("flip it horizontally", "make it black and white", "shift the colours to blue", "blur it",
         "make it brighter")


# --------------------------------------------------------------------------- data (parent, once)


def write_triplets(folder: Path, n: int, *, size: int, seed: int) -> Path:
    """``n`` triplets in diffusers' layout (``metadata.jsonl`` with ``input_image``, ``edit_prompt``,
    ``edited_image``): smooth random colour images of ``size`` px and one of five deterministic edits each."""
    from PIL import Image, ImageEnhance, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        kind = i % len(EDITS)
        if kind == 0:
            edited = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        elif kind == 1:
            edited = image.convert("L").convert("RGB")
        elif kind == 2:
            a = np.asarray(image).astype(np.int16)
            edited = Image.fromarray(np.clip(a + np.array([-40, 0, 60]), 0, 255).astype(np.uint8))
        elif kind == 3:
            edited = image.filter(ImageFilter.GaussianBlur(3))
        else:
            edited = ImageEnhance.Brightness(image).enhance(1.5)
        image.save(folder / f"{i:05d}_in.png")
        edited.save(folder / f"{i:05d}_out.png")
        rows.append({"input_image": f"{i:05d}_in.png", "edit_prompt": EDITS[kind], "edited_image": f"{i:05d}_out.png"})
    path = folder / "metadata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- mmtune's side


def mmtune_recipe(plan: dict, **train) -> dict:
    """The ``task: edit`` recipe both sides' settings are taken from. ``resize_range`` is pinned to the
    resolution, so mmtune's augmentation is the example's (resize to the resolution, a random crop of the
    same size, i.e. none, and a shared random flip)."""
    res = plan["resolution"]
    return {
        "task": "edit",
        "output_dir": plan["mmtune_run"],
        "model": {"name": plan["sd"]},
        "data": {
            "datasets": [{"path": plan["data"], "format": "edit_triplets"}],
            "resolution": res, "resize_range": [res, res], "random_flip": True,
            "val_fraction": 0.0, "num_workers": plan["workers"],
        },
        "method": {"name": "full", "conditioning_dropout": DROPOUT, "ema": {"decay": EMA_DECAY}},
        "train": {
            "seed": SEED, "max_steps": plan["steps"], "micro_batch_size": plan["batch"],
            "grad_accum_steps": plan["accum"], "lr": LR, "weight_decay": WEIGHT_DECAY, "betas": list(BETAS),
            "scheduler": "constant", "warmup_steps": 0, "max_grad_norm": MAX_GRAD_NORM,
            "mixed_precision": plan["mixed_precision"], "log_every": 1, "eval_every": None, "save_every": None,
            "tensorboard": False, "progress": False, **train,
        },
    }


def run_mmtune(plan: dict) -> dict:
    """``mmtune.train`` on the recipe; the end of every optimizer step timed by the wall clock (the loop writes
    one metrics record per step: a timestamp is taken as each is written, after the step's logging)."""
    import mmtune
    from mmtune.training import metrics as metrics_mod

    stamps: list[tuple[float, float]] = []
    original_log = metrics_mod.MetricsLogger.log

    def timed_log(self, record: dict) -> None:
        original_log(self, record)
        if "loss" in record:
            stamps.append((time.perf_counter(), time.process_time()))

    start_rss = start_memory_mark()
    if plan["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    metrics_mod.MetricsLogger.log = timed_log
    try:
        t0 = time.perf_counter()
        result = mmtune.train(mmtune_recipe(plan))
        wall = time.perf_counter() - t0
    finally:
        metrics_mod.MetricsLogger.log = original_log
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    records = [r for r in records if "loss" in r]
    out = step_figures(stamps, [r["loss"] for r in records], plan)
    # The loop's own throughput figure (its interval leaves out the logging of each step): for comparison.
    own = [r["targets_seen"] - (records[i - 1]["targets_seen"] if i else 0) for i, r in enumerate(records)]
    secs = [n / r["samples_per_s"] for n, r in zip(own, records)]
    timed = slice(plan["warmup"], None)
    out["loop_reported_steps_per_s"] = len(secs[timed]) / sum(secs[timed]) if sum(secs[timed]) else float("nan")
    out["data_wait"] = (sum(r["data_wait"] * s for r, s in zip(records[timed], secs[timed])) / sum(secs[timed])
                        if sum(secs[timed]) else float("nan"))
    out["wall_s_phase"] = wall
    out["samples_seen"] = records[-1]["targets_seen"] if records else 0
    del result
    out["memory"] = peak_memory(plan["device"], start_rss)
    out["worker_cpu_s_per_step"] = children_cpu_seconds() / max(out["steps"], 1)
    return out


# --------------------------------------------------------------------------- the baseline (diffusers' example)


def open_baseline_parts(sd: str) -> SimpleNamespace:
    """The example's model setup: each part from its subfolder, ``conv_in`` widened to 8 input channels (the
    original weights copied, the added channels zero), VAE and text encoder frozen.

    One difference from the example as published: it leaves the new ``conv_in``'s bias at PyTorch's random
    initialisation; here the bias is copied too, so both sides start from the same weights (mmtune copies it,
    which keeps the widened UNet's output equal to the original's)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    noise_scheduler = DDPMScheduler.from_pretrained(sd, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(sd, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    old = unet.conv_in
    if old.in_channels != 8:
        widened = torch.nn.Conv2d(8, old.out_channels, old.kernel_size, old.stride, old.padding)
        with torch.no_grad():
            widened.weight.zero_()
            widened.weight[:, : old.in_channels].copy_(old.weight)
            widened.bias.copy_(old.bias)
        unet.conv_in = widened
        unet.register_to_config(in_channels=8)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                           noise_scheduler=noise_scheduler)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Instructions padded (and truncated) to the tokenizer's max length, as the example tokenizes captions."""
    return tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                     return_tensors="pt").input_ids


class TripletFolder(torch.utils.data.Dataset):
    """The triplets of a ``metadata.jsonl``, preprocessed per sample in the example's order: both images to RGB
    and resized to the resolution, stacked, scaled to [-1, 1], one random crop and one random flip for the
    stack (so both images get the same), split again; the instruction tokenized."""

    def __init__(self, metadata: Path, tokenizer, resolution: int) -> None:
        from torchvision import transforms

        self.root = metadata.parent
        self.rows = [json.loads(line) for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
        self.tokenizer, self.resolution = tokenizer, resolution
        self.augment = transforms.Compose([transforms.RandomCrop(resolution), transforms.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self, name: str) -> np.ndarray:
        from PIL import Image

        with Image.open(self.root / name) as image:
            image = image.convert("RGB").resize((self.resolution, self.resolution))
            return np.asarray(image).transpose(2, 0, 1)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        both = np.concatenate([self._pixels(row["input_image"]), self._pixels(row["edited_image"])])
        both = self.augment(2 * (torch.tensor(both) / 255) - 1)
        original, edited = both.chunk(2)
        return {"original_pixel_values": original, "edited_pixel_values": edited,
                "input_ids": tokenize(self.tokenizer, [row["edit_prompt"]])[0]}


def collate_triplets(examples: list[dict]) -> dict:
    return {key: torch.stack([e[key] for e in examples]).contiguous().float() if key != "input_ids"
            else torch.stack([e[key] for e in examples]) for key in examples[0]}


def baseline_loss(parts: SimpleNamespace, batch: dict, *, weight_dtype: torch.dtype, p: float,
                  generator: torch.Generator | None = None, draws=None) -> torch.Tensor:
    """One micro-batch of the example's training step -> its mean MSE loss. ``draws`` (noise, timesteps,
    dropout r) replaces the random draws, for the parity check."""
    vae, text_encoder, unet, scheduler = parts.vae, parts.text_encoder, parts.unet, parts.noise_scheduler
    # The edited image is what is denoised: its latents are sampled and scaled.
    latents = vae.encode(batch["edited_pixel_values"].to(weight_dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    bsz = latents.shape[0]
    noise = torch.randn_like(latents) if draws is None else draws.noise.to(latents)
    if draws is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
    else:
        timesteps = draws.timesteps.to(latents.device)
    timesteps = timesteps.long()
    noisy_latents = scheduler.add_noise(latents, noise, timesteps)
    text = text_encoder(batch["input_ids"])[0]
    # The input image conditions the UNet through its latents' mode, unscaled.
    image = vae.encode(batch["original_pixel_values"].to(weight_dtype)).latent_dist.mode()
    if p:
        r = (torch.rand(bsz, device=latents.device, generator=generator) if draws is None
             else draws.dropout.to(latents.device))
        empty = text_encoder(tokenize(parts.tokenizer, [""]).to(latents.device))[0]
        text = torch.where((r < 2 * p).reshape(bsz, 1, 1), empty, text)
        dropped = (r >= p).to(image.dtype) * (r < 3 * p).to(image.dtype)
        image = (1 - dropped).reshape(bsz, 1, 1, 1) * image
    unet_input = torch.cat([noisy_latents, image], dim=1)
    if scheduler.config.prediction_type == "epsilon":
        target = noise
    elif scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unknown prediction type {scheduler.config.prediction_type}")
    prediction = unet(unet_input, timesteps, text).sample
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")


def timed_batches(loader, waits: list[float]):
    """The loader's batches, the seconds spent waiting for each appended to ``waits``."""
    iterator = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        waits.append(time.perf_counter() - t)
        yield batch


def run_baseline(plan: dict) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    start_rss = start_memory_mark()
    t0 = time.perf_counter()
    accelerator = Accelerator(gradient_accumulation_steps=plan["accum"], mixed_precision=plan["mixed_precision"],
                              cpu=plan["device"] == "cpu")
    generator = torch.Generator(device=accelerator.device).manual_seed(SEED)
    set_seed(SEED)
    parts = open_baseline_parts(plan["sd"])
    unet = parts.unet
    ema = EMAModel(unet.parameters(), decay=EMA_DECAY, model_cls=UNet2DConditionModel, model_config=unet.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, eps=1e-8)
    dataset = TripletFolder(Path(plan["data"]), parts.tokenizer, plan["resolution"])
    loader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=collate_triplets,
                                         batch_size=plan["batch"], num_workers=plan["workers"])
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0,
                                 num_training_steps=plan["steps"] * accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    parts.unet = unet
    ema.to(accelerator.device)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    parts.text_encoder.to(accelerator.device, dtype=weight_dtype)
    parts.vae.to(accelerator.device, dtype=weight_dtype)
    if plan["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()

    stamps, losses = [], []
    step, train_loss = 0, 0.0
    waits, step_waits = [], []  # seconds spent getting each batch from the DataLoader; their sum per step
    t_loop = time.perf_counter()
    while step < plan["steps"]:
        unet.train()
        for batch in timed_batches(loader, waits):
            with accelerator.accumulate(unet):
                loss = baseline_loss(parts, batch, weight_dtype=weight_dtype, p=DROPOUT, generator=generator)
                mean = accelerator.gather(loss.repeat(plan["batch"])).mean()
                train_loss += mean.item() / plan["accum"]
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                ema.step(unet.parameters())
                step += 1
                losses.append(train_loss)
                train_loss = 0.0
                step_waits.append(sum(waits))
                waits.clear()
                stamps.append((time.perf_counter(), time.process_time()))
                if step >= plan["steps"]:
                    break
    out = step_figures(stamps, losses, plan)
    out["data_wait"] = sum(step_waits[plan["warmup"]:]) / out["seconds_timed"] if out["seconds_timed"] else float("nan")
    out["wall_s_phase"] = time.perf_counter() - t0
    out["wall_s_loop"] = time.perf_counter() - t_loop
    out["samples_seen"] = step * plan["batch"] * plan["accum"]
    del loader, optimizer, unet, parts, ema
    out["memory"] = peak_memory(plan["device"], start_rss)
    out["worker_cpu_s_per_step"] = children_cpu_seconds() / max(out["steps"], 1)
    return out


# --------------------------------------------------------------------------- figures of a side


def step_figures(stamps: list[tuple[float, float]], losses: list[float], plan: dict) -> dict:
    """Per optimizer step, wall seconds and this process's CPU seconds (all its threads; DataLoader workers are
    other processes), from the clocks read at the end of each step; the first ``warmup`` steps left out (the
    end of the last of them is where the timing starts)."""
    w = plan["warmup"]
    wall = np.diff([t for t, _ in stamps])
    cpu = np.diff([c for _, c in stamps])
    timed_wall, timed_cpu = wall[w - 1:], cpu[w - 1:]
    seconds = float(timed_wall.sum())
    return {
        "steps": len(stamps), "timed_steps": len(timed_wall), "seconds_timed": seconds,
        "steps_per_s": len(timed_wall) / seconds if seconds > 0 else float("nan"),
        "step_s": spread(timed_wall.tolist()), "cpu_step_s": spread(timed_cpu.tolist()),
        "step_seconds": [round(float(x), 4) for x in wall],  # every step from the second on
        "cpu_step_seconds": [round(float(x), 4) for x in cpu],
        "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None,
        "losses": [round(float(x), 6) for x in losses],
    }


def pooled(rounds: list[dict], plan: dict) -> dict:
    """One side's figures over all its rounds: steps/s from the total timed seconds (mean) and from the median
    step (robust to stalls caused by other processes on the machine), median CPU seconds per step, the highest
    peak memory, the first round's losses (every round starts from the same seed)."""
    w = plan["warmup"]
    wall = [x for r in rounds for x in r["step_seconds"][w - 1:]]
    cpu = [x for r in rounds for x in r["cpu_step_seconds"][w - 1:]]
    seconds = float(sum(wall))
    median = float(np.median(wall)) if wall else float("nan")
    memory = {k: max((r["memory"].get(k) for r in rounds if r["memory"].get(k) is not None), default=None)
              for k in rounds[0]["memory"]}
    out = {
        "rounds": len(rounds), "steps": rounds[0]["steps"], "timed_steps": len(wall), "seconds_timed": seconds,
        "steps_per_s": len(wall) / seconds if seconds > 0 else float("nan"),
        "steps_per_s_median": 1 / median if median > 0 else float("nan"),
        "step_s": spread(wall), "cpu_step_s": spread(cpu),
        "round_steps_per_s": [r["steps_per_s"] for r in rounds],
        "first_loss": rounds[0]["first_loss"], "final_loss": rounds[0]["final_loss"],
        "same_losses_every_round": all(r["losses"] == rounds[0]["losses"] for r in rounds),
        "memory": memory, "process_wall_s": float(np.median([r["process_wall_s"] for r in rounds])),
        "per_round": rounds,
    }
    for key in ("loop_reported_steps_per_s", "data_wait", "worker_cpu_s_per_step"):
        if key in rounds[0]:
            out[key] = float(np.median([r[key] for r in rounds]))
    return out


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children: its DataLoader workers, once they are joined."""
    import gc
    import resource

    gc.collect()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _proc_status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def start_memory_mark() -> float | None:
    """After the libraries both sides use are imported: reset this process's RSS high-water mark (Linux) and
    return the RSS now, so :func:`peak_memory` can tell the run's peak from the imports' (about 800 MiB of a
    CUDA build of torch, diffusers and transformers, the same on both sides)."""
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401
    from transformers import CLIPTextModel  # noqa: F401

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_mib("VmRSS")


def peak_memory(device: str, start_rss: float | None) -> dict:
    """Peak RSS of this process (kernel high-water mark over its life) and of its largest reaped child (a
    DataLoader worker); the peak RSS since :func:`start_memory_mark` and its rise above the RSS then; on GPU
    ``torch.cuda.max_memory_allocated``."""
    out = dict(peak_rss_mib())
    hwm = _proc_status_mib("VmHWM") if start_rss is not None else None
    out.update({"start_rss_mib": start_rss, "run_peak_rss_mib": hwm,
                "run_rise_mib": round(hwm - start_rss, 1) if hwm is not None else None})
    if device == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# --------------------------------------------------------------------------- (a) parity of the first step


def parity_check(plan: dict) -> dict:
    """mmtune's ``EditObjective`` (from the edit task's own setup) and the baseline's step on the same batch and
    the same draws: the loss of each and their difference, for random draws and for draws that hit every dropout
    case; the largest gradient difference; whether both sides start from the same UNet weights. fp32."""
    from mmtune.config.loader import validate_recipe
    from mmtune.models.diffusion.objective import StepDraws
    from mmtune.training.setup import start_runtime
    from mmtune.training.tasks import TASKS

    if plan["device"] == "cuda":  # the same kernels on both sides; no TF32 rounding in the comparison
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    recipe = validate_recipe(mmtune_recipe(plan, mixed_precision="no"), source="benchmark recipe")
    runtime = start_runtime(recipe.train)
    task = TASKS["edit"].setup(recipe, runtime)
    device = runtime.device
    objective = task.objective.to(device).train()
    parts = open_baseline_parts(plan["sd"])
    for part in (parts.unet, parts.vae, parts.text_encoder):
        part.to(device)
    parts.unet.train()

    mm_state, bl_state = objective.unet.state_dict(), parts.unet.state_dict()
    weights_diff = max(float((mm_state[k].float() - bl_state[k].float()).abs().max()) for k in mm_state)
    assert mm_state.keys() == bl_state.keys()

    # One micro-batch as mmtune builds it (the first rows of the data, its worker's augmentation), given to both.
    rows = [[i] for i in range(plan["batch"])]
    torch.manual_seed(SEED)
    batch = task.collate(rows).to(device)
    prompts = [task.collate.samples[r[0]].edit_prompt for r in rows]
    same_ids = bool(torch.equal(tokenize(parts.tokenizer, prompts).to(device), batch.input_ids))
    as_dict = {"original_pixel_values": batch.original, "edited_pixel_values": batch.edited,
               "input_ids": batch.input_ids}

    bsz, vae_cfg = plan["batch"], parts.vae.config
    down = 2 ** (len(vae_cfg.block_out_channels) - 1)
    latent_shape = (bsz, vae_cfg.latent_channels, plan["resolution"] // down, plan["resolution"] // down)
    g = torch.Generator().manual_seed(SEED)
    noise = torch.randn(latent_shape, generator=g)
    timesteps = torch.randint(0, parts.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
    cases = {
        "random draws": torch.rand(bsz, generator=g),
        # r < p: text dropped; p <= r < 2p: both; 2p <= r < 3p: image dropped; else none.
        "every dropout case": torch.tensor([0.5 * DROPOUT, 1.5 * DROPOUT, 2.5 * DROPOUT, 0.5])[
            torch.arange(bsz) % 4],
    }
    results = {}
    for name, r in cases.items():
        draws = StepDraws(noise=noise.to(device), timesteps=timesteps.to(device), dropout=r.to(device))
        objective.zero_grad(set_to_none=True)
        parts.unet.zero_grad(set_to_none=True)
        torch.manual_seed(SEED + 1)  # the VAE's latent sample draws from the global generator on both sides
        loss_sum, n = objective(batch, draws=draws)
        mm_loss = loss_sum / n
        mm_loss.backward()
        torch.manual_seed(SEED + 1)
        bl_loss = baseline_loss(parts, as_dict, weight_dtype=torch.float32, p=DROPOUT, draws=draws)
        bl_loss.backward()
        mm_grads = dict(objective.unet.named_parameters())
        grad_diff = max(float((p.grad - mm_grads[k].grad).abs().max()) for k, p in parts.unet.named_parameters()
                        if p.grad is not None)
        grad_scale = max(float(p.grad.abs().max()) for p in parts.unet.parameters() if p.grad is not None)
        mm_value, bl_value = float(mm_loss.detach()), float(bl_loss.detach())
        results[name] = {"mmtune_loss": mm_value, "baseline_loss": bl_value, "abs_diff": abs(mm_value - bl_value), "max_grad_diff": grad_diff,
                         "max_grad": grad_scale, "dropout_r": [round(float(x), 4) for x in r]}
    worst = max(v["abs_diff"] for v in results.values())
    out = {"cases": results, "max_abs_diff": worst, "tolerance": PARITY_TOLERANCE,
           "met": worst <= PARITY_TOLERANCE, "unet_weights_max_diff": weights_diff, "same_input_ids": same_ids,
           "device": str(device), "batch": bsz}
    del objective, task, parts
    if plan["device"] == "cuda":
        torch.cuda.empty_cache()
    return out


# --------------------------------------------------------------------------- orchestration


def side_main(side: str, work: Path, round_index: int) -> int:
    plan = json.loads((work / "plan.json").read_text())
    plan["mmtune_run"] = f"{plan['mmtune_run']}-{round_index}"  # a fresh run directory per round
    result = {"mmtune": run_mmtune, "hf": run_baseline}[side](plan)
    result["torch_threads"] = torch.get_num_threads()
    (work / f"result-{side}.json").write_text(json.dumps(result, default=str))
    return 0


def print_parity(parity: dict) -> None:
    print(f"\n--- (a) first-step loss, same batch / noise / timesteps / dropout / VAE sample "
          f"({parity['batch']} samples, fp32, {parity['device']}) ---")
    print(f"UNet weights at start, largest difference: {parity['unet_weights_max_diff']:.3g}; "
          f"instruction ids equal: {parity['same_input_ids']}")
    rows = [("draws", "mmtune EditObjective", "baseline step", "|diff|", "max |grad diff| (max |grad|)")]
    for name, c in parity["cases"].items():
        rows.append((f"{name} r={c['dropout_r']}", f"{c['mmtune_loss']:.8f}", f"{c['baseline_loss']:.8f}",
                     f"{c['abs_diff']:.2e}", f"{c['max_grad_diff']:.2e} ({c['max_grad']:.2e})"))
    widths = [max(len(r[i]) for r in rows) + 2 for i in range(5)]
    for r in rows:
        print("".join(f"{cell:<{w}}" for cell, w in zip(r, widths)).rstrip())
    print(f"largest loss difference {parity['max_abs_diff']:.2e}; target <= {parity['tolerance']:g}: "
          f"{'MET' if parity['met'] else 'NOT MET'}")


def memory_cell(side: dict) -> str:
    """Peak RSS of the run (and its rise over the RSS once the libraries are imported), the largest worker's."""
    m = side["memory"]
    if m.get("run_peak_rss_mib") is None:
        return f"{m['main_mib']:.0f} (worker {m['largest_worker_mib']:.0f})"
    return (f"{m['run_peak_rss_mib']:.0f} (+{m['run_rise_mib']:.0f} over {m['start_rss_mib']:.0f}); "
            f"worker {m['largest_worker_mib']:.0f}")


def print_report(plan: dict, parity: dict | None, mm: dict, bl: dict) -> dict:
    if parity is not None:
        print_parity(parity)
    ratio = mm["steps_per_s"] / bl["steps_per_s"]
    ratio_median = mm["steps_per_s_median"] / bl["steps_per_s_median"]
    cpu_ratio = ((bl["cpu_step_s"]["p50"] + bl["worker_cpu_s_per_step"])
                 / (mm["cpu_step_s"]["p50"] + mm["worker_cpu_s_per_step"]))
    mem_key = "cuda_max_allocated_mib" if plan["device"] == "cuda" else "run_peak_rss_mib"
    if mm["memory"].get(mem_key) is None or bl["memory"].get(mem_key) is None:
        mem_key = "main_mib"
    mem_ratio = mm["memory"][mem_key] / bl["memory"][mem_key]

    def seconds(spread_: dict) -> str:
        return f"{spread_['p50']:.3f} ({spread_['min']:.3f}-{spread_['max']:.3f})"

    rows = [
        ("", "mmtune (mmtune.train)", "baseline (diffusers example loop)"),
        ("rounds x optimizer steps (timed)", f"{mm['rounds']} x {mm['steps']} ({mm['timed_steps']})",
         f"{bl['rounds']} x {bl['steps']} ({bl['timed_steps']})"),
        ("samples per step", f"{plan['batch']} x {plan['accum']}", f"{plan['batch']} x {plan['accum']}"),
        ("timed seconds", f"{mm['seconds_timed']:.2f}", f"{bl['seconds_timed']:.2f}"),
        ("steps/s (total timed)", f"{mm['steps_per_s']:.3f}", f"{bl['steps_per_s']:.3f}"),
        ("  per round", ", ".join(f"{x:.3f}" for x in mm["round_steps_per_s"]),
         ", ".join(f"{x:.3f}" for x in bl["round_steps_per_s"])),
        ("steps/s (median step)", f"{mm['steps_per_s_median']:.3f}", f"{bl['steps_per_s_median']:.3f}"),
        ("wall s per step: p50 (min-max)", seconds(mm["step_s"]), seconds(bl["step_s"])),
        ("main-process CPU s per step: p50", seconds(mm["cpu_step_s"]), seconds(bl["cpu_step_s"])),
        ("  + DataLoader workers' CPU s per step", f"{mm['worker_cpu_s_per_step']:.4f}",
         f"{bl['worker_cpu_s_per_step']:.4f}"),
        ("data wait (share of timed wall time)", f"{mm['data_wait']:.1%}", f"{bl['data_wait']:.1%}"),
        ("loop's own steps/s figure", f"{mm['loop_reported_steps_per_s']:.3f}", ""),
        ("loss: first / last step (round 1)", f"{mm['first_loss']:.4f} / {mm['final_loss']:.4f}",
         f"{bl['first_loss']:.4f} / {bl['final_loss']:.4f}"),
        ("same losses every round", str(mm["same_losses_every_round"]), str(bl["same_losses_every_round"])),
        ("peak RSS MiB (rise over imports); worker", memory_cell(mm), memory_cell(bl)),
        *([("CUDA max allocated MiB", f"{mm['memory']['cuda_max_allocated_mib']:.0f}",
            f"{bl['memory']['cuda_max_allocated_mib']:.0f}")] if plan["device"] == "cuda" else []),
        ("process wall s (incl. loading), median", f"{mm['process_wall_s']:.1f}", f"{bl['process_wall_s']:.1f}"),
    ]
    print(f"\n--- (b) steps/s and (c) peak memory: {plan['resolution']} px, micro-batch {plan['batch']}, "
          f"accumulation {plan['accum']}, {plan['steps']} steps ({plan['warmup']} warm-up) x {mm['rounds']} "
          f"alternating rounds, {plan['workers']} DataLoader workers each, {plan['device']}, mixed precision "
          f"{plan['mixed_precision']} ---")
    print_table(rows)
    print(f"steps/s ratio mmtune/baseline: {ratio:.3f}x on total time, {ratio_median:.3f}x on the median step "
          f"(inverse CPU s per step, main + workers: {cpu_ratio:.3f}x); target >= 1.0x: "
          f"{'MET' if min(ratio, ratio_median) >= 1.0 else 'MET on the median step only' if ratio_median >= 1.0 else 'NOT MET'}")
    print(f"peak memory ratio mmtune/baseline ({mem_key}): {mem_ratio:.3f}x")
    loss_diff = parity["max_abs_diff"] if parity is not None else float("nan")
    verdict_a = "skipped" if parity is None else "met" if parity["met"] else "not_met"
    print(f"RESULT loss_diff={loss_diff:.2e} parity={verdict_a} "
          f"mmtune_steps_s={mm['steps_per_s']:.3f} baseline_steps_s={bl['steps_per_s']:.3f} ratio={ratio:.3f}x "
          f"ratio_median_step={ratio_median:.3f}x target_1.0x={'met' if ratio >= 1.0 else 'not_met'} "
          f"mmtune_{mem_key}={mm['memory'][mem_key]:.0f} baseline_{mem_key}={bl['memory'][mem_key]:.0f}")
    return {"ratio": ratio, "ratio_median_step": ratio_median, "cpu_ratio": cpu_ratio, "memory_ratio": mem_ratio}


def resolve_precision(name: str, device: str) -> str:
    if device == "cpu":
        return "no" if name == "auto" else name
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=64, help="training crop in px (default 64)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps on each side per round (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing (default 5)")
    p.add_argument("--batch", type=int, default=4, help="micro-batch size (default 4)")
    p.add_argument("--accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides (default 2)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of each side, alternating mmtune / baseline (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads of each side's process (default: torch's own, one per core); 1 is "
                        "steadier on a machine that other processes load")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="the recipe's train.mixed_precision, also the baseline's (auto: bf16 on GPU, none on CPU)")
    p.add_argument("--sd", type=Path, default=None, help="a Stable Diffusion directory (default: a tiny random one)")
    p.add_argument("--triplets", type=int, default=None,
                   help="triplets written (default: steps x batch x accum, one epoch on both sides)")
    p.add_argument("--skip-parity", action="store_true", help="skip check (a)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    p.add_argument("--side", choices=["mmtune", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.side:
        return side_main(args.side, args.work, args.round)
    if args.threads:  # every process of the run: this one (the parity check) and, inherited, each side's
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.device == "cpu":  # mmtune's runtime takes the GPU when it sees one: hide it from every process
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    if args.warmup < 1 or args.steps <= args.warmup or args.rounds < 1:
        raise SystemExit("--warmup must be at least 1 and below --steps; --rounds at least 1")

    t_start = time.perf_counter()
    print(f"mmtune InstructPix2Pix benchmark: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"load average at start (1/5/15 min): {loadavg()}  (other busy processes skew the figures)")
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-ip2p-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if args.sd is None:
            from mmtune.models.diffusion.tiny import build_tiny_stable_diffusion

            sd = build_tiny_stable_diffusion(work / "tiny-sd", seed=SEED)
        else:
            sd = args.sd.resolve()
        n = args.triplets or args.steps * args.batch * args.accum
        data = write_triplets(work / "triplets", n, size=args.resolution * 3 // 2, seed=SEED)
        plan = {
            "sd": str(sd), "sd_kind": "tiny random" if args.sd is None else str(args.sd), "data": str(data),
            "triplets": n, "resolution": args.resolution, "steps": args.steps, "warmup": args.warmup,
            "batch": args.batch, "accum": args.accum, "workers": args.workers, "device": device,
            "mixed_precision": resolve_precision(args.mixed_precision, device),
            "mmtune_run": str(work / "run-mmtune"),
        }
        (work / "plan.json").write_text(json.dumps(plan))
        print(f"setup (model, {n} triplets of {args.resolution * 3 // 2} px; not timed): "
              f"{time.perf_counter() - t0:.1f}s; Stable Diffusion: {plan['sd_kind']} ({sd})")
        print(f"both sides: UNet full + EMA {EMA_DECAY}, AdamW lr {LR} wd {WEIGHT_DECAY} constant, clip "
              f"{MAX_GRAD_NORM}, conditioning dropout {DROPOUT}, seed {SEED}", flush=True)

        parity = None
        if not args.skip_parity:
            t0 = time.perf_counter()
            parity = parity_check(plan)
            print(f"(a) parity check: {time.perf_counter() - t0:.1f}s, largest loss difference "
                  f"{parity['max_abs_diff']:.2e}", flush=True)
        rounds: dict[str, list[dict]] = {"mmtune": [], "hf": []}
        for i in range(args.rounds):
            for side, name in (("mmtune", "mmtune"), ("hf", "baseline")):
                print(f"-- round {i + 1}/{args.rounds}: {name} side (subprocess) ...", flush=True)
                result = run_side(__file__, side, work, "--round", str(i))
                rounds[side].append(result)
                print(f"   done: {result['steps']} steps, {result['steps_per_s']:.3f} steps/s (median step "
                      f"{result['step_s']['p50']:.3f}s); load average {loadavg()}", flush=True)
        mm, bl = pooled(rounds["mmtune"], plan), pooled(rounds["hf"], plan)
    verdict = print_report(plan, parity, mm, bl)
    return finish(t_start, args.json, plan=plan, parity=parity, mmtune=mm, baseline=bl, **verdict)


if __name__ == "__main__":
    raise SystemExit(main())
