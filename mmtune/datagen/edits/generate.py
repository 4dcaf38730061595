"""``mmtune data generate edits``: captions -> edit text -> Prompt-to-Prompt image pairs -> CLIP filter -> triplets.

The InstructPix2Pix data pipeline (Brooks et al. 2023, section 3.1) with local
models, in two resumable stages:

1. **Edit text** (``OUT/edit-text/``): the LLM answers each caption without a
   given edit, in seeded batches (batch g is sampled with a seed derived from
   the run seed and g); accepted (input, edit, output) rows go to
   ``edit-text/data.jsonl``, the batch count and filter counters to
   ``edit-text/state.json``.
2. **Image pairs** (``OUT/``): per accepted caption pair, ``samples`` draws of
   (seed, p, guidance scale) from a generator seeded by the run seed and the
   caption's index, one Prompt-to-Prompt pair per draw, the CLIP filter over
   all of them, and the kept pairs written as PNGs to ``images/`` and as rows
   of ``metadata.jsonl`` (diffusers' triplet layout: ``input_image``,
   ``edit_prompt``, ``edited_image``, plus the captions, the draw and the four
   similarities). One caption pair is one resumable step.

Both stages append their rows and then replace their state file atomically
(``datagen.store.RunFolder``): rows past what the state counts are cut off on
resume and made again, identically, because every draw is derived from the run
seed and the item's number, never from what ran before. Images are written
before their rows, under names made of the caption index and the sample seed,
so a pair cut off mid-write is simply written again. A resumed run with other
settings is refused. ``report.json`` holds the counts of what each filter removed,
``triplets.yaml`` a dataset card (format ``edit_triplets``) for a recipe.
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mmtune.datagen.edits.clip_filter import ClipScorer, ClipThresholds, select
from mmtune.datagen.edits.edit_text import (
    CaptionRow,
    EditText,
    edit_rejection,
    edit_text_prompt,
    judge_completion,
    read_captions,
)
from mmtune.datagen.edits.options import EditGenOptions
from mmtune.datagen.edits.prompt_to_prompt import (
    AttentionSharing,
    generate_pair,
    prompt_to_prompt,
)
from mmtune.datagen.report import GenerationReport, counters_dict
from mmtune.datagen.sampler import Sampler
from mmtune.datagen.self_instruct import derived_seed, file_digest
from mmtune.datagen.store import RunFolder
from mmtune.errors import ModelError

METHOD = "prompt-to-prompt"
"""The method names in the two state files (what a folder holds)."""
TEXT_METHOD = "caption-edit"
TEXT_DIR = "edit-text"
DATA_FILE = "metadata.jsonl"
IMAGES_DIR = "images"
CARD_FILE = "triplets.yaml"


class TripletFolder(RunFolder):
    """The run folder of the image stage: its rows are diffusers' ``metadata.jsonl``."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.data = self.dir / DATA_FILE


@dataclass(frozen=True)
class SampleDraw:
    seed: int
    p: float
    """Fraction of the denoising steps that share attention."""
    guidance_scale: float


def sample_draws(opts: EditGenOptions, index: int) -> list[SampleDraw]:
    """The ``samples`` draws of caption pair ``index``: distinct 32-bit seeds, p and guidance uniform in their ranges.

    Seeded by the run seed and the caption's index alone, so a caption pair's samples do not depend on which
    other captions were accepted or on where a run was interrupted.
    """
    rng = random.Random(derived_seed(opts.seed, "pair", index))
    draws: list[SampleDraw] = []
    seen: set[int] = set()
    while len(draws) < opts.samples:
        seed = rng.getrandbits(32)
        if seed in seen:
            continue
        seen.add(seed)
        draws.append(SampleDraw(seed, rng.uniform(*opts.p2p_range), rng.uniform(*opts.guidance_range)))
    return draws


@dataclass
class EditsReport:
    out_dir: str
    captions: int
    edit_texts: int
    """Caption pairs (input caption, edit, output caption) that passed the edit-text filters."""
    pairs: int
    """Caption pairs whose images were generated and filtered."""
    triplets: int
    """Rows in ``metadata.jsonl``."""
    counters: dict[str, int] = field(default_factory=dict)
    """``stage: reason`` -> count; ``stage: candidates`` is how many entered the stage (edit text: captions;
    pairs: caption pairs; samples: image pairs drawn)."""

    def as_dict(self) -> dict:
        """What ``report.json`` holds: everything but ``out_dir`` (the folder it lies in, which may move)."""
        return {k: v for k, v in asdict(self).items() if k != "out_dir"}

    def format(self) -> str:
        table = GenerationReport("edits", self.out_dir, 0, 0, 0, self.counters).format().splitlines()[1:]
        head = (f"edits: {self.triplets} triplets from {self.pairs} caption pairs in "
                f"{Path(self.out_dir) / DATA_FILE} ({self.captions} captions, {self.edit_texts} edit texts)")
        return "\n".join([head, *table])


def generate_edits(captions: Path, out_dir: Path, opts: EditGenOptions | None = None, *,
                   sampler: Sampler | None = None, pipe=None, scorer: ClipScorer | None = None,
                   progress: bool = True) -> EditsReport:
    """Generate editing triplets for ``captions`` into ``out_dir`` (resuming what is there); returns the report.

    ``sampler``, ``pipe`` (a ``StableDiffusionPipeline``) and ``scorer`` replace the models ``opts`` names (they
    are then loaded only if needed: no LLM when every caption comes with its edit, no Stable Diffusion or CLIP
    when every caption pair is done); the settings recorded for resumption stay ``opts``'s names.
    """
    opts = opts or EditGenOptions()
    opts.check()
    out_dir = Path(out_dir)
    rows = read_captions(captions)[: opts.limit]
    text_settings = {"captions": str(Path(captions).resolve()), "captions_sha256": file_digest(captions),
                     **opts.text_settings(), "sampler": sampler.settings() if sampler else opts.sampler_settings()}
    texts, text_counters = _edit_texts(rows, out_dir / TEXT_DIR, opts, text_settings, sampler, progress)
    return _image_pairs(len(rows), texts, text_counters, out_dir, opts, text_settings, pipe, scorer, progress)


# --------------------------------------------------------------------------- stage 1: edit text


def _edit_texts(rows: list[CaptionRow], folder_dir: Path, opts: EditGenOptions, settings: dict,
                sampler: Sampler | None, progress: bool) -> tuple[list[EditText], Counter]:
    folder = RunFolder(folder_dir)
    state, accepted = folder.open(TEXT_METHOD, settings)
    total = math.ceil(len(rows) / opts.batch_size)
    bar = tqdm(total=len(rows), initial=min(state.batches_done * opts.batch_size, len(rows)), desc="edit text",
               unit="caption", disable=not progress)
    while state.batches_done < total:
        g = state.batches_done
        batch = rows[g * opts.batch_size: (g + 1) * opts.batch_size]
        asked = [r for r in batch if not r.given]
        if asked and sampler is None:
            from mmtune.datagen.sampler import load_sampler

            sampler = load_sampler(opts.llm, temperature=opts.temperature, top_p=opts.top_p)
        answers = iter(sampler.complete([edit_text_prompt(r.caption) for r in asked], chat=True,
                                        seed=derived_seed(opts.seed, TEXT_METHOD, g),
                                        max_new_tokens=opts.max_new_tokens) if asked else [])
        new_rows = []
        for row in batch:
            state.counters["edit text: candidates"] += 1
            if row.given:
                state.counters["edit text: given"] += 1
                reason = edit_rejection(row.caption, row.edit, row.output)
                text = None if reason else EditText(row.index, row.caption, row.edit, row.output, source="given")
            else:
                state.counters["edit text: generated"] += 1
                text, reason = judge_completion(row, next(answers))
            if reason:
                state.counters[f"edit text: {reason}"] += 1
                continue
            state.counters["edit text: accepted"] += 1
            new_rows.append(text.as_row())
        folder.commit(state, new_rows)
        accepted.extend(new_rows)
        bar.update(len(batch))
        bar.set_postfix(accepted=len(accepted))
    bar.close()
    return [EditText(**row) for row in accepted], state.counters


# --------------------------------------------------------------------------- stage 2: image pairs and the CLIP filter


def _image_pairs(n_captions: int, texts: list[EditText], text_counters: Counter, out_dir: Path,
                 opts: EditGenOptions, text_settings: dict, pipe, scorer: ClipScorer | None,
                 progress: bool) -> EditsReport:
    folder = TripletFolder(out_dir)
    state, _ = folder.open(METHOD, {"edit_text": text_settings, **opts.image_settings()})
    todo = texts[state.batches_done:]
    (out_dir / IMAGES_DIR).mkdir(exist_ok=True)
    thresholds = ClipThresholds(opts.min_caption_sim, opts.min_direction_sim, opts.min_image_sim, opts.keep)
    sharing = AttentionSharing(opts.share)
    if todo:
        device = opts.device or _default_device()
        pipe = pipe if pipe is not None else open_pipeline(opts.sd, device=device, dtype=opts.dtype,
                                                           scheduler=opts.scheduler)
        scorer = scorer if scorer is not None else ClipScorer.open(opts.clip, opts.clip_pretrained, device=device)
    bar = tqdm(total=len(texts) * opts.samples, initial=state.batches_done * opts.samples, desc="image pairs",
               unit="sample", disable=not progress)
    with prompt_to_prompt(pipe.unet, sharing) if todo else nullcontext():
        for text in todo:
            draws = sample_draws(opts, text.index)
            images = []
            for draw in draws:
                images.append(generate_pair(pipe, sharing, text.input, text.output, p=draw.p,
                                            guidance_scale=draw.guidance_scale, seed=draw.seed, steps=opts.steps,
                                            resolution=opts.resolution))
                bar.update(1)
            scores = scorer.score([a for a, _ in images], [b for _, b in images], text.input, text.output)
            kept, removed = select(scores, thresholds)
            state.counters["pairs: candidates"] += 1
            state.counters["pairs: no sample kept"] += not kept
            state.counters["samples: candidates"] += len(draws)
            state.counters.update({f"samples: {reason}": n for reason, n in removed.items()})
            state.counters["samples: kept"] += len(kept)
            new_rows = [_write_triplet(out_dir, text, draws[i], images[i], scores.row(i)) for i in kept]
            folder.commit(state, new_rows)
            bar.set_postfix(triplets=state.rows)
    bar.close()
    counters = counters_dict(text_counters + state.counters)
    report = EditsReport(str(out_dir), n_captions, len(texts), state.batches_done, state.rows, counters)
    folder.write_report(report.as_dict())
    _write_card(out_dir, report)
    return report


def _write_triplet(out_dir: Path, text: EditText, draw: SampleDraw, images: tuple, scores: dict) -> dict:
    """Save one kept pair (PNG, through a temporary name and a rename) and return its ``metadata.jsonl`` row."""
    names = [f"{IMAGES_DIR}/{text.index:06d}_{draw.seed}_{k}.png" for k in (0, 1)]
    for name, image in zip(names, images):
        target = out_dir / name
        tmp = target.with_name(f".tmp-{target.name}")
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    return {"input_image": names[0], "edit_prompt": text.edit, "edited_image": names[1],
            "input_caption": text.input, "output_caption": text.output, "caption_index": text.index,
            "edit_source": text.source, "seed": draw.seed, "p2p": draw.p, "guidance_scale": draw.guidance_scale,
            **scores}


def _write_card(out_dir: Path, report: EditsReport) -> None:
    import yaml

    from mmtune.utils.atomic import atomic_write_text

    card = {
        "description": f"{report.triplets} InstructPix2Pix-style editing triplets from {report.pairs} caption pairs, "
                       "generated by mmtune data generate edits (Prompt-to-Prompt pairs, CLIP-filtered)",
        "license": "generated data: the licences of the captions and of the models that made it apply",
        "path": DATA_FILE,
        "format": "edit_triplets",
    }
    atomic_write_text(out_dir / CARD_FILE, yaml.safe_dump(card, sort_keys=False, width=1000))


# --------------------------------------------------------------------------- models


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def open_pipeline(name: str, *, device: str = "cpu", dtype: str = "float32", scheduler: str = "euler_ancestral"):
    """diffusers' ``StableDiffusionPipeline`` of ``name`` (no safety checker, no progress bar) on ``device``.

    ``scheduler="euler_ancestral"`` swaps in ``EulerAncestralDiscreteScheduler`` built from the model's scheduler
    config (the sampler the paper generated with); ``"model"`` keeps the model's own.
    """
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    from mmtune.models.diffusion.tiny import TINY_SD_ALIAS, resolve_tiny_alias

    source = name
    if name == TINY_SD_ALIAS:
        source = str(resolve_tiny_alias())
    elif Path(name).expanduser().exists():
        path = Path(name).expanduser()
        if not (path / "model_index.json").is_file():
            raise ModelError(f"--sd: {path} is not a Stable Diffusion pipeline directory in diffusers' layout "
                             "(no model_index.json)")
        source = str(path)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(source, dtype=getattr(torch, dtype), safety_checker=None,
                                                       requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"--sd: could not open the Stable Diffusion model '{name}' ({first}). It must be a local "
                         "directory in diffusers' layout, a hub name already in the local cache, or "
                         f"{TINY_SD_ALIAS}") from None
    if pipe.unet.config.in_channels != 4:
        raise ModelError(f"--sd: '{name}' has a UNet of {pipe.unet.config.in_channels} input channels; generating "
                         "from text needs a text-to-image Stable Diffusion (4), not an editing model")
    if scheduler == "euler_ancestral" and not isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler):
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
