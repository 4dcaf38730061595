"""A tiny random Stable Diffusion in diffusers' layout: for tests, benchmarks and CPU recipes without weights.

It is saved and opened like a real one (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``, ``model_index.json``), only small. The
tokenizer is CLIP's own byte-level BPE, read from the vocabulary file that
``open_clip`` ships, cut to its first ``merges`` merges: real prompts
tokenize the way Stable Diffusion's tokenizer splits them, into a smaller
vocabulary.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import torch


def write_clip_tokenizer(out: Path, *, merges: int = 2048, max_length: int = 77) -> Path:
    """A ``CLIPTokenizer`` directory from open_clip's BPE vocabulary (its first ``merges`` merges)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    source = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    pairs = gzip.open(source).read().decode("utf-8").split("\n")[1 : merges + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(p.split()) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)},
                              merges=[tuple(p.split()) for p in pairs], model_max_length=max_length)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_stable_diffusion(out: Path, *, seed: int = 0, width: int = 32, latent_channels: int = 4,
                                text_width: int = 32, merges: int = 2048) -> Path:
    """Write a random tiny Stable Diffusion to ``out`` (a UNet of 4 input channels, as SD 1.5 has).

    Shapes follow diffusers' own pipeline tests: a 2-level UNet of width
    ``width`` / ``2 * width`` with cross-attention on its lower level, a
    2-level VAE (latents at half the image size), a 2-layer CLIP text encoder.
    The random VAE is made to behave like a trained one in the two ways training
    relies on (:func:`_settle_random_vae`). The noise schedule is SD 1.5's (scaled linear betas 0.00085 -> 0.012 over
    1000 steps, epsilon prediction); inference uses Euler ancestral, as the
    published InstructPix2Pix pipeline does.
    """
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out = Path(out)
    write_clip_tokenizer(out / "tokenizer", merges=merges)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=latent_channels, out_channels=latent_channels, layers_per_block=1,
        block_out_channels=(width, 2 * width), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=text_width,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(width, 2 * width),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=32,
    )
    _settle_random_vae(vae, latent_channels)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=text_width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


def _settle_random_vae(vae, latent_channels: int) -> None:
    """Make a random VAE's latents what a trained VAE's are: nearly deterministic and of unit scale.

    At initialisation the posterior's log-variance is about 0, so a sampled
    latent (``latent_dist.sample()``, what the edit task denoises) would be
    noise of std 1 around a mean of std ~0.25: the image would be buried.
    A trained VAE's posterior is narrow, so the log-variance half of
    ``quant_conv`` is set to a constant -20 (std 5e-5). ``scaling_factor`` is
    then chosen as Stable Diffusion's was, 1 / std of the latents, measured on
    smooth random colour fields (seeded: the same model every build).
    """
    import torch.nn.functional as F

    with torch.no_grad():
        vae.quant_conv.weight[latent_channels:] = 0
        vae.quant_conv.bias[latent_channels:] = -20.0
        fields = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
        x = F.interpolate(fields, size=(64, 64), mode="bicubic", align_corners=False).clamp(-1, 1)
        std = vae.encode(x).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))


TINY_SD_ALIAS = "tiny-stable-diffusion"
"""``model.name`` of the edit task's CPU recipes: :func:`build_tiny_stable_diffusion` (seed 0), written once
into ``$MMTUNE_CACHE/models`` (random weights: it learns from scratch what a recipe trains)."""
TINY_SD_BUILD = 3
"""Bumped whenever :func:`build_tiny_stable_diffusion` changes what it writes: the cache entry is per build, so
an older cached model is never used in its place."""


def resolve_tiny_alias() -> Path:
    """The cached tiny Stable Diffusion directory, built once (several processes of a run may start together)."""
    from mmtune.models.aliases import cache_root
    from mmtune.utils.atomic import built_once

    return built_once(cache_root() / "models" / f"{TINY_SD_ALIAS}-build{TINY_SD_BUILD}", "model_index.json",
                      build_tiny_stable_diffusion)
