"""``task: edit``: InstructPix2Pix, instruction-guided image editing with a latent diffusion UNet.

    Stable Diffusion directory -> UNet (conv_in widened 4 -> 8) + VAE + CLIP text encoder + DDPM scheduler
        -> method (UNet full, or LoRA on its attention with conv_in full; VAE and text encoder frozen)
        -> EMA of what trains -> triplets (cards, header checks, split) -> paired augmentation in workers
        -> :class:`EditObjective` -> final/ (an InstructPix2Pix pipeline directory)

The loop is the SFT loop: targets are samples (every sample weighs the same
however accumulation splits the window), with the same resume, atomic
checkpoints, NaN guard and metrics. The EMA is the task's ``extra_state``
(saved in checkpoints, restored on resume) and is updated in ``after_step``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mmtune.config.schema import EditRecipe
from mmtune.data.edit_data import load_edit_data
from mmtune.data.edit_triplets import TripletCollate, tokenize_prompts
from mmtune.models.diffusion.objective import EditObjective
from mmtune.models.diffusion.parts import inference_scheduler_of, open_edit_parts
from mmtune.errors import ConfigError
from mmtune.models.families import edit_diffusion
from mmtune.training.gathered import params_are_sharded
from mmtune.training.methods import Component, trainable_counts, trainable_table
from mmtune.training.setup import Runtime
from mmtune.training.tasks.base import TaskRun
from mmtune.utils.atomic import atomic_directory

log = logging.getLogger("mmtune")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnetEma:
    """diffusers' ``EMAModel`` over the trained parameters, as the task's checkpointed state."""

    def __init__(self, params: list[torch.nn.Parameter], *, decay: float, update_after_step: int) -> None:
        from diffusers.training_utils import EMAModel

        self.params = params
        self.ema = EMAModel(params, decay=decay, update_after_step=update_after_step)

    def update(self) -> None:
        self.ema.step(self.params)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)

    def copy_to_params(self) -> None:
        self.ema.copy_to(self.params)


def frozen_dtype(recipe: EditRecipe, runtime: Runtime) -> torch.dtype:
    """The VAE's and text encoder's dtype: as asked, else the mixed-precision dtype on GPU, float32 on CPU."""
    if recipe.model.dtype != "auto":
        return _DTYPES[recipe.model.dtype]
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(runtime.mixed_precision, torch.float32)


class EditTask:
    def setup(self, recipe: EditRecipe, runtime: Runtime) -> TaskRun:
        cfg, tc = recipe, recipe.train
        if cfg.method.ema is not None and params_are_sharded(runtime.accelerator):
            # the EMA holds the parameters it was given; sharding puts new (partial) ones in their place
            raise ConfigError("method.ema: the EMA follows whole UNet parameters, which train.distributed "
                              f"'{tc.distributed}' (or the launcher's config) shards; use ddp or deepspeed_zero2, "
                              "or drop method.ema")

        # ---- model parts and what trains -------------------------------------------------
        parts = open_edit_parts(cfg.model, dtype=frozen_dtype(cfg, runtime))
        unet = parts.unet
        if cfg.method.name == "lora":
            from peft import LoraConfig

            unet.requires_grad_(False)
            lora = cfg.method.lora
            unet.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                        init_lora_weights="gaussian", target_modules=lora.target_modules))
            unet.conv_in.requires_grad_(True)  # its image channels start at zero: they must learn
        if tc.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        null_ids = torch.from_numpy(tokenize_prompts(parts.tokenizer, [""])[0])
        objective = EditObjective(unet, parts.vae, parts.text_encoder, parts.noise_scheduler, null_ids=null_ids,
                                  conditioning_dropout=cfg.method.conditioning_dropout)
        components = [Component("unet", unet, cfg.method.name, None),
                      Component("vae", parts.vae, "frozen", None),
                      Component("text_encoder", parts.text_encoder, "frozen", None)]
        for line in trainable_table(objective, components):
            log.info("params: %s", line)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        groups = [{"params": trainable, "lr": tc.lr, "weight_decay": tc.weight_decay}]
        ema = None
        if cfg.method.ema is not None:
            ema = UnetEma(trainable, decay=cfg.method.ema.decay, update_after_step=cfg.method.ema.update_after_step)
            log.info("ema: decay %g of %s trained parameters", cfg.method.ema.decay,
                     f"{sum(p.numel() for p in trainable):,}")
        log.info("unet: prediction %s, conditioning dropout %g, %s attention", objective.prediction_type,
                 cfg.method.conditioning_dropout, "SDPA" if hasattr(torch.nn.functional, "scaled_dot_product_attention")
                 else "eager")

        # ---- data ---------------------------------------------------------------------------
        data = load_edit_data(cfg.data, seed=tc.seed)
        for line in data.reports:
            log.info("data: %s", line)
        sizes = cfg.data.crop_sizes()

        def collate_of(samples, train: bool) -> TripletCollate:
            ids = tokenize_prompts(parts.tokenizer, [s.edit_prompt for s in samples]) if samples else None
            return TripletCollate(samples, ids, resolution=cfg.data.resolution, sizes=sizes,
                                  flip=cfg.data.random_flip, train=train)

        rows = [[i] for i in range(len(data.train))]
        val_rows = [[i] for i in range(len(data.val))]
        log.info("train: %d triplets; val: %d; %d px crops of a %d-%d px resize%s", len(rows), len(val_rows),
                 cfg.data.resolution, *sizes, ", random flips" if cfg.data.random_flip else "")

        def write_final(target: Path, trained: EditObjective) -> None:
            if ema is not None:
                ema.copy_to_params()  # final/ holds the EMA weights, as the published model does
            with atomic_directory(target) as tmp:
                extra = edit_diffusion.save(
                    tmp, unet=trained.unet, vae=trained.vae, text_encoder=trained.text_encoder,
                    tokenizer=parts.tokenizer, scheduler=inference_scheduler_of(parts.source),
                    lora=cfg.method.name == "lora")
                meta = {"family": edit_diffusion.NAME, "base_model": cfg.model.model_dump(mode="json"),
                        "method": cfg.method.name, "ema": ema is not None, **extra}
                (tmp / "mmtune.json").write_text(json.dumps(meta, indent=2))

        return TaskRun(
            objective=objective, param_groups=groups, rows=rows, val_rows=val_rows,
            collate=collate_of(data.train, True), val_collate=collate_of(data.val, False),
            save_final=write_final, on_bad_sample=cfg.data.on_bad_sample, num_workers=cfg.data.num_workers,
            summary={"data": data.reports, "widened_conv_in": parts.widened,
                     "trainable": trainable_counts(objective, components)},
            throughput_key="samples_per_s",
            after_step=ema.update if ema is not None else None, extra_state=ema,
        )
