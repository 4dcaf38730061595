"""One InstructPix2Pix training step as a module: ``forward(batch) -> (loss_sum, n_samples)``.

    edited image  -> VAE -> sample x scaling factor -> + noise at t ~ U{0..T-1} -> noisy latents --+
    input image   -> VAE -> mode (unscaled) ---------------------------------------------------- cat -> UNet -> MSE
    instruction   -> CLIP text encoder -> cross-attention conditioning ----------------------------------^   to target

Conditioning dropout follows diffusers' ``train_instruct_pix2pix.py``: one
draw r ~ U(0, 1) per sample; the text becomes the empty prompt's embedding when
r < 2p and the image latents become zero when p <= r < 3p, so at p = 0.05 the
text alone is dropped for 5% of samples, both for 5%, the image alone for 5%.
The random draws come from torch's global generator in this order (the
edited image's latent sample, noise, timesteps, dropout), which the loop saves
and restores, so a resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepDraws:
    """The random draws of one step, given explicitly (the benchmark compares two loops on the same draws)."""

    noise: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None
    dropout: torch.Tensor | None = None
    """r ~ U(0, 1) per sample."""


class EditObjective(nn.Module):
    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, noise_scheduler, *,
                 null_ids: torch.Tensor, conditioning_dropout: float) -> None:
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.noise_scheduler = noise_scheduler
        self.register_buffer("null_ids", null_ids.reshape(1, -1), persistent=False)
        self.conditioning_dropout = conditioning_dropout

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    def unet_inputs(self, batch, draws: StepDraws | None = None):
        """``(unet input, timesteps, text embeddings, target)`` of a batch: everything but the UNet's forward.

        In training mode the draws come from torch's global generator. In eval
        mode (the loop's validation) they come from a generator seeded the same
        for every batch and there is no conditioning dropout, so the eval loss
        of one step compares with another's instead of moving with the draws.
        """
        draws = draws or StepDraws()
        device = batch.edited.device
        generator = None if self.training else torch.Generator(device=device).manual_seed(0)
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            latents = self.vae.encode(batch.edited.to(vae_dtype)).latent_dist.sample(generator=generator)
            latents = latents * self.vae.config.scaling_factor
            noise = draws.noise if draws.noise is not None else torch.randn(
                latents.shape, generator=generator, device=device, dtype=latents.dtype)
            bsz = latents.shape[0]
            timesteps = draws.timesteps if draws.timesteps is not None else torch.randint(
                0, self.noise_scheduler.config.num_train_timesteps, (bsz,), device=device, generator=generator)
            timesteps = timesteps.long().to(device)
            noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
            text = self.text_encoder(batch.input_ids)[0]
            image = self.vae.encode(batch.original.to(vae_dtype)).latent_dist.mode()
            p = self.conditioning_dropout if self.training or draws.dropout is not None else 0.0
            if p > 0:
                r = draws.dropout if draws.dropout is not None else torch.rand(bsz, device=latents.device)
                r = r.to(latents.device)
                null_text = self.text_encoder(self.null_ids)[0]
                text = torch.where((r < 2 * p).reshape(bsz, 1, 1), null_text.to(text.dtype), text)
                keep_image = 1 - ((r >= p) & (r < 3 * p)).to(image.dtype)
                image = keep_image.reshape(bsz, 1, 1, 1) * image
            if self.prediction_type == "epsilon":
                target = noise
            elif self.prediction_type == "v_prediction":
                target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
            else:
                raise ValueError(f"unknown prediction type {self.prediction_type!r} of the noise scheduler")
        return torch.cat([noisy, image], dim=1), timesteps, text, target

    def forward(self, batch, draws: StepDraws | None = None):
        unet_input, timesteps, text, target = self.unet_inputs(batch, draws)
        prediction = self.unet(unet_input, timesteps, text, return_dict=False)[0]
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return per_sample.sum(), torch.tensor(len(per_sample), device=per_sample.device)
