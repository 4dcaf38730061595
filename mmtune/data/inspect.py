"""``mmtune data inspect``: see exactly what the model will be trained on.

Renders a few tokenized samples with the trained spans marked (media
positions as ``<image x16>``) and what the sample's metadata records (the
erased system prompt, the drawn instruction template), and prints token-length
statistics, truncation and skip counts, and packing utilisation. A command
above the data pipeline: it asks the recipe's media branches for their token
counts (without loading the LLM).
"""

from __future__ import annotations

import numpy as np

from mmtune.config.schema import EditRecipe, HintRecipe, SftRecipe
from mmtune.data.erasure import ERASED_KEY
from mmtune.data.instruction_templates import TEMPLATE_KEY
from mmtune.data.packing import make_rows, packing_utilisation
from mmtune.data.pipeline import build_conversation_data, format_reports
from mmtune.data.sni import with_instruction_placement
from mmtune.data.templates import install_template
from mmtune.errors import ConfigError
from mmtune.modalities import MODALITIES
from mmtune.models.loading import load_tokenizer

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\033[32m", "\033[0m"


def mark_trained(tokenizer, ids: np.ndarray, trained: np.ndarray, *, color: bool) -> str:
    """Decode ``ids`` with every trained run wrapped in markers (or coloured)."""
    out, start = [], 0
    tags = {m.placeholder_id: m.tag for m in MODALITIES.values()}
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start] or (ids[i] in tags) != (ids[start] in tags) \
                or (ids[i] in tags and ids[i] != ids[start]):  # a video's sound track follows it
            if ids[start] in tags:
                text = f"{tags[int(ids[start])][:-1]} x{i - start}>"
            else:
                text = tokenizer.decode(ids[start:i].tolist(), skip_special_tokens=False)
            if trained[start]:
                text = f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"
            out.append(text)
            start = i
    return "".join(out)


def inspect_data(recipe: SftRecipe | EditRecipe, *, samples: int = 3, color: bool = False) -> str:
    if isinstance(recipe, EditRecipe):
        return inspect_edit_data(recipe, samples=samples)
    if not isinstance(recipe, SftRecipe):
        raise ConfigError(f"data inspect shows conversation or triplet data; this recipe's task is {recipe.task}")
    from mmtune.models.open import open_media_specs

    tokenizer = load_tokenizer(recipe.model)
    install_template(tokenizer, recipe.data.template)
    media = open_media_specs(recipe.model.branches(), tokenizer)
    data_cfg = recipe.data
    if isinstance(recipe, HintRecipe):  # the prompts as the hint task trains them: instructions per hint.fusion
        data_cfg = with_instruction_placement(recipe.data, recipe.hint.fusion)
    data = build_conversation_data(tokenizer, data_cfg, seed=recipe.train.seed, media=media)
    lines = ["== datasets"] + [f"  {line}" for line in format_reports(data.reports)]
    if isinstance(recipe, HintRecipe):
        lines.append(f"== {len(data.train.tasks)} tasks; each instruction is read by the hypernetwork"
                     f"{' and is in the prompt too (hint.fusion)' if recipe.hint.fusion else ', not in the prompt'}")
    legend = "green" if color else f"{OPEN}…{CLOSE}"
    for k in range(min(samples, len(data.train))):
        ids, trained = data.train[k]
        lines.append(f"== sample {k} ({len(ids)} tokens, {int(trained.sum())} trained, marked {legend})")
        meta = data.train.meta(k)
        if TEMPLATE_KEY in meta:
            lines.append(f"-- instruction template {meta[TEMPLATE_KEY]}")
        erased = meta.get(ERASED_KEY)
        if erased is not None:
            lines.append(f"-- erased system prompt (generated with, not trained on): {erased}")
            lines.append("-- trained on (system prompt as rendered below):")
        lines.append(mark_trained(tokenizer, np.asarray(ids), np.asarray(trained), color=color))
    lengths = data.train.lengths()
    trained_total = sum(int(np.asarray(data.train[k][1]).sum()) for k in range(len(data.train)))
    lines.append("== token lengths (train)")
    if len(lengths):
        q = np.percentile(lengths, [50, 95])
        lines.append(
            f"  samples {len(lengths)}  min {lengths.min()}  mean {lengths.mean():.1f}  p50 {q[0]:.0f}  "
            f"p95 {q[1]:.0f}  max {lengths.max()}  (max_length {recipe.data.max_length})"
        )
        lines.append(f"  trained tokens {trained_total} of {int(lengths.sum())} ({trained_total / max(lengths.sum(), 1):.1%})")
    lines.append(f"  truncated {sum(r.truncated for r in data.reports)}  skipped "
                 f"{sum(sum(r.skipped.values()) for r in data.reports)}  validation samples {len(data.val)}")
    if recipe.data.packing:
        rows = make_rows(lengths, recipe.data.max_length, True)
        lines.append(f"  packed into {len(rows)} rows, utilisation "
                     f"{packing_utilisation(rows, lengths, recipe.data.max_length):.1%}")
    return "\n".join(lines)


def inspect_edit_data(recipe: EditRecipe, *, samples: int = 3) -> str:
    """An edit recipe's triplets: what each dataset gave (and skipped), a few samples, the split, the crops."""
    from PIL import Image

    from mmtune.data.edit_data import load_edit_data

    data = load_edit_data(recipe.data, seed=recipe.train.seed)
    lines = ["== datasets"] + [f"  {line}" for line in data.reports]
    for k, triplet in enumerate(data.train[:samples]):
        sizes = []
        for path in (triplet.input_image, triplet.edited_image):
            with Image.open(path) as im:
                sizes.append("x".join(map(str, im.size)))
        lines += [f"== sample {k} ({triplet.origin})", f"  instruction: {triplet.edit_prompt}",
                  f"  input:  {triplet.input_image} ({sizes[0]})", f"  edited: {triplet.edited_image} ({sizes[1]})"]
    words = np.array([len(t.edit_prompt.split()) for t in data.train])
    low, high = recipe.data.crop_sizes()
    lines += ["== triplets", f"  train {len(data.train)}  validation {len(data.val)}",
              f"  instruction words: min {words.min()}  mean {words.mean():.1f}  max {words.max()} "
              "(the CLIP tokenizer keeps 77 tokens)",
              f"  training crops: {recipe.data.resolution} px of a {low}-{high} px square resize"
              f"{', flipped with p 0.5' if recipe.data.random_flip else ''} (the same for both images)"]
    return "\n".join(lines)
