"""Editing triplets (input image, instruction, edited image) as training samples, and their batches.

    dataset cards / paths -> ``edit_formats`` readers (rows -> :class:`Triplet`, header checks, counted skips)
        -> train / val split -> instruction ids (the CLIP tokenizer, once, here)
        -> :class:`TripletCollate` in DataLoader workers: decode both images, the *same* random resize,
           crop and flip on both (as published: a square resize to a size drawn from ``resize_range``, a
           random ``resolution`` crop, a horizontal flip with p = 0.5), pixels to [-1, 1]

The collate draws from torch's generator, which the micro-batch stream seeds
per micro-batch (``mmtune.data.loader``), so augmentation is a pure function of
the seed and the position in the run and a resumed run sees the same crops.
Workers never raise: an image that fails to decode comes back in
``EditBatch.problems`` (one line naming file, row and field, or a counted skip).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from mmtune.data.packing import BatchProblem
from mmtune.modalities.base import MediaProblem
from mmtune.modalities.image import load_rgb

log = logging.getLogger("mmtune")


@dataclass(frozen=True)
class Triplet:
    input_image: str
    """Absolute path of the image before the edit."""
    edit_prompt: str
    edited_image: str
    """Absolute path of the image after the edit."""
    origin: str
    """``file, row N`` (or the sample's folder): where the triplet came from, for error lines."""
    more_pairs: tuple[tuple[str, str], ...] = ()
    """Further ``(input, edited)`` image pairs of the same sample and instruction: the other seeds of an
    ``ip2p_folders`` sample. Training draws one of all its pairs each time the sample is read, as the
    original repository does (a sample weighs the same however many seeds it kept, and its seeds never
    straddle the train / val split); evaluation always reads the first pair."""


@dataclass
class EditBatch:
    original: torch.Tensor
    """``[B, 3, H, W]`` in [-1, 1]: the images before the edit."""
    edited: torch.Tensor
    """``[B, 3, H, W]`` in [-1, 1]: the images after the edit (what is denoised)."""
    input_ids: torch.Tensor
    """``[B, L]``: the instructions, tokenized by the model's CLIP tokenizer (padded to its max length)."""
    problems: list[BatchProblem] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        """Samples: the loop weighs every sample the same."""
        return len(self.original)

    def to(self, device) -> "EditBatch":
        return EditBatch(self.original.to(device), self.edited.to(device), self.input_ids.to(device), self.problems)


def tokenize_prompts(tokenizer, prompts: list[str]) -> np.ndarray:
    """``[N, max_length]`` ids, padded and truncated to the tokenizer's max length (77 for CLIP), as SD reads them."""
    ids = tokenizer(prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="np").input_ids
    return ids.astype(np.int64)


def paired_augment(a, b, *, resolution: int, sizes: tuple[int, int], flip: bool, train: bool):
    """The same resize, crop and flip of two PIL images -> two ``[3, resolution, resolution]`` tensors in [-1, 1].

    ``train``: both resized to a square side drawn from ``sizes`` (inclusive),
    cropped at one random offset, flipped together with p = 0.5. Otherwise
    both resized to ``resolution`` (what the eval loss and ``mmtune edit`` see).
    """
    from PIL import Image

    side = int(torch.randint(sizes[0], sizes[1] + 1, ()).item()) if train else resolution
    pair = []
    for image in (a, b):
        image = image.resize((side, side), Image.Resampling.LANCZOS)
        pair.append(torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
    both = torch.cat(pair)  # [6, side, side]: one crop and one flip for both images
    if train:
        top = int(torch.randint(0, side - resolution + 1, ()).item())
        left = int(torch.randint(0, side - resolution + 1, ()).item())
        both = both[:, top : top + resolution, left : left + resolution]
        if flip and torch.rand(()) < 0.5:
            both = both.flip(-1)
    return both[:3].contiguous(), both[3:].contiguous()


class TripletCollate:
    """Rows of sample indices -> an :class:`EditBatch` (picklable: it runs in DataLoader workers)."""

    def __init__(self, samples: list[Triplet], ids: np.ndarray, *, resolution: int, sizes: tuple[int, int],
                 flip: bool, train: bool) -> None:
        self.samples, self.ids = samples, ids
        self.resolution, self.sizes, self.flip, self.train = resolution, sizes, flip, train

    def __call__(self, rows: list[list[int]]) -> EditBatch:
        originals, editeds, kept, problems = [], [], [], []
        for index in (i for row in rows for i in row):
            sample = self.samples[index]
            first, second = sample.input_image, sample.edited_image
            if sample.more_pairs and self.train:  # no draw for one-pair samples: their stream is unchanged
                k = int(torch.randint(0, len(sample.more_pairs) + 1, ()).item())
                if k:
                    first, second = sample.more_pairs[k - 1]
            try:
                a, b = load_rgb(first), load_rgb(second)
            except MediaProblem as problem:
                problems.append(BatchProblem(sample.origin, problem.reason, f"{sample.origin}: {problem.detail}"))
                continue
            if a.size != b.size:  # counted when the data was read; resized to the input's size here
                b = b.resize(a.size)
            x, y = paired_augment(a, b, resolution=self.resolution, sizes=self.sizes, flip=self.flip,
                                  train=self.train)
            originals.append(x)
            editeds.append(y)
            kept.append(index)
        empty = torch.zeros(0, 3, self.resolution, self.resolution)
        return EditBatch(
            torch.stack(originals) if originals else empty,
            torch.stack(editeds) if editeds else empty.clone(),
            torch.from_numpy(self.ids[kept]) if kept else torch.zeros(0, self.ids.shape[1], dtype=torch.long),
            problems,
        )
