"""Every setting of ``mmtune data generate edits``, with its default, in one typed place.

The defaults reproduce the InstructPix2Pix generator (Brooks et al. 2023,
section 3.1 and ``dataset_creation/generate_img_dataset.py``): GPT-3 sampling at
temperature 0.7 / top-p 1.0; Stable Diffusion 1.5 with Euler ancestral sampling,
100 steps at 512 px; per caption pair 100 samples with p ~ U[0.1, 0.9] and a
guidance scale ~ U[7.5, 15]; CLIP ViT-L/14 filters at 0.2 (image-caption),
0.2 (directional) and 0.7 (image-image), keeping at most 4 by directional
similarity. The CLI and the Python API read them from here, so they cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args, get_origin, get_type_hints

from mmtune.config.schema import DEFAULT_MODEL
from mmtune.errors import ConfigError

SD_DEFAULT = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""The paper's Stable Diffusion (1.5): a hub name that must already be in the local cache (no hub at run time)."""

ShareKind = Literal["self", "cross", "both"]


@dataclass
class EditGenOptions:
    # ------------------------------------------------------------------ edit text (an LLM)
    llm: str = DEFAULT_MODEL
    """Writes (edit instruction, edited caption) for a caption: an alias, model or run directory. Tune it on the
    shipped examples first (``configs/edit_text_smollm2.yaml``); an untuned model mostly writes malformed text."""
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 16
    """Captions per LLM call; one batch is one resumable step."""
    max_new_tokens: int = 96
    """Tokens for one answer; an answer cut off by this limit is dropped as unfinished."""
    limit: int | None = None
    """Use only the first N captions."""

    # ------------------------------------------------------------------ image pairs (SD + Prompt-to-Prompt)
    sd: str = SD_DEFAULT
    """A Stable Diffusion directory in diffusers' layout, a hub name in the local cache, or
    ``tiny-stable-diffusion``."""
    scheduler: Literal["euler_ancestral", "model"] = "euler_ancestral"
    """``euler_ancestral`` (the paper's sampler, built from the model's scheduler config) or the model's own."""
    steps: int = 100
    resolution: int = 512
    samples: int = 100
    """Image pairs drawn per caption pair, before the CLIP filter."""
    p2p_range: tuple[float, float] = (0.1, 0.9)
    """p ~ U[low, high]: the fraction of denoising steps (the first ones) in which the edited caption's
    generation uses the input caption's attention maps."""
    guidance_range: tuple[float, float] = (7.5, 15.0)
    """Classifier-free guidance scale ~ U[low, high], per sample."""
    share: ShareKind = "both"
    """Which attention maps are shared: ``cross`` (Prompt-to-Prompt's word-aligned cross-attention maps),
    ``self`` (what InstructPix2Pix's released generator copies) or ``both``."""

    # ------------------------------------------------------------------ CLIP filter (open_clip)
    clip: str = "ViT-L-14"
    """An open_clip model name, ``hf-hub:`` / ``local-dir:`` name, a local directory in open_clip's layout
    (``open_clip_config.json`` + weights), or ``tiny-open-clip``."""
    clip_pretrained: str | None = "openai"
    """The pretrained tag or checkpoint file of a model named by ``clip`` (ignored for directories)."""
    min_caption_sim: float = 0.2
    """Both images must have at least this CLIP similarity to their own caption."""
    min_direction_sim: float = 0.2
    """The image change must point the way the caption change does (cosine of the two differences)."""
    min_image_sim: float = 0.7
    """The two images must stay this similar (the edit keeps the picture)."""
    keep: int = 4
    """At most this many samples per caption pair survive, the best by directional similarity."""

    # ------------------------------------------------------------------ run
    seed: int = 0
    """Run seed: every LLM batch and every caption pair's draws (seeds, p, guidance) derive from it."""
    device: str | None = None
    """Default: cuda when available, else cpu. A resumed run should use the same device (float results)."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Of the Stable Diffusion pipeline (the CLIP model stays float32)."""

    def check(self) -> None:
        """One line per impossible setting, before any model is loaded."""
        positive = ("batch_size", "max_new_tokens", "steps", "resolution", "samples", "keep")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"edits: {name} must be at least 1 (got {getattr(self, name)})")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"edits: limit must be at least 1 (got {self.limit})")
        low, high = self.p2p_range
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"edits: p2p_range must satisfy 0 <= low <= high <= 1 (got {low}, {high})")
        low, high = self.guidance_range
        if not 0.0 <= low <= high:
            raise ConfigError(f"edits: guidance_range must satisfy 0 <= low <= high (got {low}, {high})")
        for name, kind in get_type_hints(type(self)).items():  # the flags take any text: the Literals check it
            allowed = get_args(kind) if get_origin(kind) is Literal else ()
            if allowed and getattr(self, name) not in allowed:
                raise ConfigError(f"edits: {name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")

    def sampler_settings(self) -> dict:
        """What identifies the LLM's sampling: the same keys ``HFSampler.settings()`` reports."""
        return {"model": self.llm, "temperature": self.temperature, "top_p": self.top_p}

    def text_settings(self) -> dict:
        """What fixes the edit-text stage's output besides the sampler (a resumed run must match it)."""
        return {name: getattr(self, name) for name in ("batch_size", "max_new_tokens", "limit", "seed")}

    def image_settings(self) -> dict:
        """What fixes the image stage's output; the device is left out (a run may move to another machine)."""
        text = {*self.sampler_settings(), "llm", *self.text_settings()} - {"seed"}
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self) if f.name not in text | {"device"}}
