"""The CLIP filter of InstructPix2Pix (section 3.1.2): open_clip similarities, thresholds, the best k.

Most Prompt-to-Prompt samples are not usable: the picture does not show its
caption, the change goes another way than the edit, or the edit changed the
whole picture. Per sample, with L2-normalised CLIP embeddings (images ``I0``,
``I1``, captions ``T0``, ``T1``), as the paper's ``ClipSimilarity`` computes:

- image-caption similarity: cos(I0, T0) and cos(I1, T1), both >= ``caption``;
- directional similarity: cos(I1 - I0, T1 - T0) >= ``direction``;
- image-image similarity: cos(I0, I1) >= ``image``;

and of the samples that pass, the ``keep`` with the highest directional
similarity are kept. Each removed sample is counted once, under the first test
it fails in the order above, so the counts add up to the samples drawn.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from mmtune.errors import ModelError


@dataclass(frozen=True)
class ClipScores:
    """Per-sample similarities (1-D tensors of the same length), named as in the paper's generator's metadata."""

    sim_0: torch.Tensor
    """cos(input image, input caption)."""
    sim_1: torch.Tensor
    """cos(edited image, edited caption)."""
    sim_dir: torch.Tensor
    sim_image: torch.Tensor

    def row(self, i: int) -> dict[str, float]:
        return {name: float(getattr(self, name)[i]) for name in ("sim_0", "sim_1", "sim_dir", "sim_image")}


@dataclass(frozen=True)
class ClipThresholds:
    caption: float
    direction: float
    image: float
    keep: int

    def reasons(self) -> tuple[str, str, str, str]:
        """The counter names of the four ways a sample is removed (the thresholds in them)."""
        return (f"image-caption similarity < {self.caption:g}", f"directional similarity < {self.direction:g}",
                f"image-image similarity < {self.image:g}", f"beyond the best {self.keep}")


def similarities(image_0: torch.Tensor, image_1: torch.Tensor, text_0: torch.Tensor,
                 text_1: torch.Tensor) -> ClipScores:
    """The four similarities from embeddings ``[N, D]`` (images) and ``[D]`` or ``[N, D]`` (captions)."""
    image_0, image_1 = F.normalize(image_0.float(), dim=-1), F.normalize(image_1.float(), dim=-1)
    text_0 = F.normalize(text_0.float(), dim=-1).expand_as(image_0)
    text_1 = F.normalize(text_1.float(), dim=-1).expand_as(image_1)
    return ClipScores(
        sim_0=F.cosine_similarity(image_0, text_0, dim=-1),
        sim_1=F.cosine_similarity(image_1, text_1, dim=-1),
        sim_dir=F.cosine_similarity(image_1 - image_0, text_1 - text_0, dim=-1),
        sim_image=F.cosine_similarity(image_0, image_1, dim=-1),
    )


def select(scores: ClipScores, thresholds: ClipThresholds) -> tuple[list[int], Counter]:
    """Indices of the kept samples, best directional similarity first (ties: the earlier sample), and the count of
    samples each test removed (only tests that removed something are listed)."""
    caption, direction, image, beyond = thresholds.reasons()
    removed: Counter = Counter()
    passed = []
    for i in range(len(scores.sim_dir)):
        s = scores.row(i)  # "not >=", as the paper's generator keeps ">=": a NaN similarity fails
        if not (s["sim_0"] >= thresholds.caption and s["sim_1"] >= thresholds.caption):
            removed[caption] += 1
        elif not s["sim_dir"] >= thresholds.direction:
            removed[direction] += 1
        elif not s["sim_image"] >= thresholds.image:
            removed[image] += 1
        else:
            passed.append(i)
    passed.sort(key=lambda i: (-float(scores.sim_dir[i]), i))
    if len(passed) > thresholds.keep:
        removed[beyond] += len(passed) - thresholds.keep
    return passed[: thresholds.keep], removed


class ClipScorer:
    """An open_clip model with its tokenizer and image preprocessing, scoring the samples of one caption pair."""

    def __init__(self, model, tokenizer, preprocess, *, name: str, device: str = "cpu") -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.tokenizer, self.preprocess, self.name, self.device = tokenizer, preprocess, name, device

    @classmethod
    def open(cls, name: str, pretrained: str | None = None, *, device: str = "cpu") -> ClipScorer:
        """``name``: an open_clip model name (with ``pretrained``: a tag such as ``openai`` or a checkpoint file),
        an ``hf-hub:`` / ``local-dir:`` name, a local directory in open_clip's layout, or ``tiny-open-clip``."""
        import open_clip

        from mmtune.datagen.edits.tiny import TINY_CLIP_ALIAS, resolve_tiny_open_clip

        source = name
        if name == TINY_CLIP_ALIAS:
            source, pretrained = f"local-dir:{resolve_tiny_open_clip()}", None
        elif Path(name).expanduser().is_dir():
            folder = Path(name).expanduser()
            if not any(folder.glob(f"*.{ext}") for ext in ("safetensors", "bin", "pth")):
                raise ModelError(f"{folder}: an open_clip directory needs open_clip_config.json and a weights file "
                                 "(open_clip_model.safetensors); it has no weights")
            source, pretrained = f"local-dir:{folder}", None
        elif name.startswith(("local-dir:", "hf-hub:")):
            pretrained = None
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                source, pretrained=pretrained, require_pretrained=pretrained is not None)
            tokenizer = open_clip.get_tokenizer(source)
        except Exception as exc:  # open_clip raises RuntimeError / ValueError / FileNotFoundError / hub errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"could not open the open_clip model '{name}' (pretrained={pretrained!r}): {first}. "
                             "Give a model name whose weights are in the local cache, a checkpoint file as "
                             "--clip-pretrained, a local open_clip directory, or tiny-open-clip") from None
        return cls(model, tokenizer, preprocess, name=name, device=device)

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels).float()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()

    def score(self, images_0: list, images_1: list, caption_0: str, caption_1: str) -> ClipScores:
        """Similarities of N sample pairs (PIL images) of one caption pair."""
        images = self.embed_images([*images_0, *images_1])
        texts = self.embed_texts([caption_0, caption_1])
        n = len(images_0)
        return similarities(images[:n], images[n:], texts[0], texts[1])
