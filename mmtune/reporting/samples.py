"""A run's validation samples answered by its ``final/`` model, for the report to show beside the references.

Conversation runs (``task: sft``): the validation split is rebuilt exactly as
training built it (the same recipe, seed and tokenized cache), and each
sample's prompt is its tokens up to the first trained token: the chat
template, the media placeholders and the assistant header the model was
trained on. The model answers greedily through the batched decoding loop
(``generation.decoding.replies_to_prompts``, media spliced in as in
``mmtune chat``); the reference is the first trained span.

Hint runs (``task: hint``): the same, each sample answered with its task's adapters (and prefix) generated from
the task's instruction (``models.hint.adapt.instructed``).

Edit runs (``task: edit``): each validation triplet's input image is edited by
its instruction through diffusers' InstructPix2Pix pipeline
(``generation.edit``), shown beside the reference edited image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mmtune.config.schema import EditRecipe, HintRecipe, Recipe, SftRecipe
from mmtune.modalities.base import MediaItem
from mmtune.reporting.media import MediaView, image_url, media_view
from mmtune.reporting.options import ReportOptions

log = logging.getLogger("mmtune")


@dataclass
class ConversationSample:
    where: str
    """Which validation sample: its dataset and index."""
    prompt: str
    """The prompt as the model read it (chat template kept, media as ``<image x16>``)."""
    answer: str
    reference: str
    media: list[MediaView] = field(default_factory=list)


@dataclass
class EditSample:
    where: str
    instruction: str
    before: str
    """``data:`` URLs of the input image, the reference edited image and the model's edit."""
    reference: str
    output: str


@dataclass
class SampleSection:
    samples: list[ConversationSample] | list[EditSample]
    note: str = ""
    """Why there are no samples, when there are none (no final/, no validation split, a task without a view)."""


def spread(total: int, count: int) -> list[int]:
    """``count`` indices evenly spread over ``range(total)``, so every dataset of a mixture shows."""
    if total == 0 or count == 0:
        return []
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def first_trained_span(trained: np.ndarray) -> tuple[int, int]:
    """Start and end of the first run of trained tokens (the first token is never a target)."""
    start = 1 + int(np.argmax(trained[1:]))
    after = np.flatnonzero(~trained[start:])
    return start, start + (int(after[0]) if len(after) else len(trained) - start)


def items_in_prompt(items: list[MediaItem], specs: dict, positions: int) -> list[MediaItem]:
    """The leading items whose placeholders fill ``positions`` positions (a later turn's media stay out)."""
    from mmtune.data.media import media_slots

    kept, used = [], 0
    for item, slot in zip(items, media_slots(items, specs)):
        if used + slot.tokens > positions:
            break
        kept.append(item)
        used += slot.tokens
    return kept


def sample_prompts(data, tokenizer, specs: dict, options: ReportOptions) -> tuple[list[int], list, list[ConversationSample]]:
    """Spread validation samples: their indices, their prompts (tokens up to the first trained one) and the
    unanswered samples with their references."""
    from mmtune.data.inspect import mark_trained
    from mmtune.generation.prompts import Prompt

    picks, prompts, samples = spread(len(data.val), options.samples), [], []
    for k in picks:
        ids, trained = np.asarray(data.val[k][0]), np.asarray(data.val[k][1], dtype=bool)
        start, end = first_trained_span(trained)
        items = items_in_prompt(data.val.media(k), specs, int((ids[:start] < 0).sum()))
        prompts.append(Prompt(ids[:start].tolist(), items))
        source, index = data.val.refs[k]
        samples.append(ConversationSample(
            where=f"{data.val.sources[source].name}, sample {index}",
            prompt=mark_trained(tokenizer, ids[:start], np.zeros(start, dtype=bool), color=False),
            answer="", reference=tokenizer.decode(ids[start:end].tolist(), skip_special_tokens=True).strip(),
            media=[media_view(item) for item in items]))
    return picks, prompts, samples


def conversation_samples(run_dir: Path, recipe: SftRecipe, options: ReportOptions) -> list[ConversationSample]:
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.generation.decoding import replies_to_prompts
    from mmtune.generation.edit import resolve_device
    from mmtune.generation.options import GenerationOptions
    from mmtune.generation.prompts import model_media_specs
    from mmtune.models.run_outputs import load_for_inference

    device = resolve_device(options.device)
    model, tokenizer = load_for_inference(str(run_dir), device_type=device.split(":")[0])
    specs = model_media_specs(model, tokenizer)
    data = build_conversation_data(tokenizer, recipe.data, seed=recipe.train.seed, media=specs)
    _, prompts, samples = sample_prompts(data, tokenizer, specs, options)
    answers = replies_to_prompts(model, tokenizer, prompts, GenerationOptions(max_new_tokens=options.max_new_tokens),
                                 progress=False, desc="report samples")
    return [replace(sample, answer=answer) for sample, answer in zip(samples, answers)]


def hint_samples(run_dir: Path, recipe: HintRecipe, options: ReportOptions) -> list[ConversationSample]:
    """As :func:`conversation_samples`, each answered with its task's adapters generated from its instruction
    (on CPU: a hint run opens there for ``mmtune hint adapt``)."""
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.data.sni import task_instructions, with_instruction_placement
    from mmtune.generation.decoding import replies_to_prompts
    from mmtune.generation.options import GenerationOptions
    from mmtune.models.hint.adapt import instructed, open_hint_run

    run = open_hint_run(run_dir)
    data_cfg = with_instruction_placement(recipe.data, recipe.hint.fusion)
    data = build_conversation_data(run.tokenizer, data_cfg, seed=recipe.train.seed)
    instructions = task_instructions(data_cfg.datasets)
    picks, prompts, samples = sample_prompts(data, run.tokenizer, {}, options)
    answers = [""] * len(picks)
    for task in sorted({data.val.task(k) for k in picks}):
        mine = [i for i, k in enumerate(picks) if data.val.task(k) == task]
        with instructed(run, instructions[data.val.tasks[task]]) as model:
            replies = replies_to_prompts(model, run.tokenizer, [prompts[i] for i in mine],
                                         GenerationOptions(max_new_tokens=options.max_new_tokens), progress=False)
        for i, reply in zip(mine, replies):
            answers[i] = reply
    return [replace(sample, answer=answer) for sample, answer in zip(samples, answers)]


def edit_samples(run_dir: Path, recipe: EditRecipe, options: ReportOptions) -> list[EditSample]:
    from mmtune.data.edit_data import load_edit_data
    from mmtune.generation.edit import EditOptions, edit_image, open_editor
    from mmtune.modalities.image import load_rgb

    data = load_edit_data(recipe.data, seed=recipe.train.seed)
    picks = spread(len(data.val), options.samples)
    if not picks:
        return []
    editor = open_editor(run_dir, device=options.device)
    edit = EditOptions(resolution=recipe.data.resolution, progress=False,
                       **({"steps": options.edit_steps} if options.edit_steps is not None else {}))
    samples = []
    for k in picks:
        triplet = data.val[k]
        before = load_rgb(triplet.input_image)
        samples.append(EditSample(triplet.origin, triplet.edit_prompt, image_url(before),
                                  image_url(triplet.edited_image), image_url(edit_image(editor, before,
                                                                                        triplet.edit_prompt, edit))))
    return samples


SAMPLERS = {"sft": conversation_samples, "edit": edit_samples, "hint": hint_samples}
"""Task -> its validation samples answered by ``final/``."""


def validation_samples(run_dir: Path, options: ReportOptions) -> SampleSection:
    """The samples of the run at ``run_dir``, or a section that says why there are none."""
    from mmtune.config.loader import load_recipe

    if not (run_dir / "final").is_dir():
        return SampleSection([], f"{run_dir} has no final/ model (training did not finish): no samples answered")
    recipe: Recipe = load_recipe(run_dir / "config.yaml")
    if recipe.task not in SAMPLERS:
        return SampleSection([], f"the report shows no samples of task '{recipe.task}'")
    if isinstance(recipe, SftRecipe) and recipe.data.train_on_prompt:
        return SampleSection([], "data.train_on_prompt: every token was trained, so a sample's prompt cannot be told "
                                 "from its answer: no samples answered")
    samples = SAMPLERS[recipe.task](run_dir, recipe, options)
    if not samples:
        return SampleSection([], "the run has no validation split (data.val_fraction is 0): no samples answered")
    return SampleSection(samples)
