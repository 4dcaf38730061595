"""``mmtune data inspect``: see exactly what the model will be trained on.

Renders a few tokenized samples with the trained spans marked, and prints
token-length statistics, truncation and skip counts, and packing utilisation.
"""

from __future__ import annotations

import numpy as np

from mmtune.config.schema import Recipe
from mmtune.data.erasure import ERASED_KEY
from mmtune.data.packing import make_rows, packing_utilisation
from mmtune.data.pipeline import build_text_data, format_reports
from mmtune.data.templates import install_template
from mmtune.models.loading import load_tokenizer
from mmtune.vision.images import IMAGE_PLACEHOLDER_ID

OPEN, CLOSE = "⟦", "⟧"
GREEN, RESET = "\033[32m", "\033[0m"


def mark_trained(tokenizer, ids: np.ndarray, trained: np.ndarray, *, color: bool) -> str:
    """Decode ``ids`` with every trained run wrapped in markers (or coloured)."""
    out, start = [], 0
    image = ids == IMAGE_PLACEHOLDER_ID
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start] or image[i] != image[start]:
            if image[start]:
                text = f"<image x{i - start}>"
            else:
                text = tokenizer.decode(ids[start:i].tolist(), skip_special_tokens=False)
            if trained[start]:
                text = f"{GREEN}{text}{RESET}" if color else f"{OPEN}{text}{CLOSE}"
            out.append(text)
            start = i
    return "".join(out)


def inspect_data(recipe: Recipe, *, samples: int = 3, color: bool = False) -> str:
    tokenizer = load_tokenizer(recipe.model)
    install_template(tokenizer, recipe.data.template)
    image_tokens = 0
    if recipe.model.vision is not None:
        from mmtune.vision.build import count_image_tokens

        image_tokens = count_image_tokens(recipe.model.vision)
    data = build_text_data(tokenizer, recipe.data, seed=recipe.train.seed, image_tokens=image_tokens)
    lines = ["== datasets"] + [f"  {line}" for line in format_reports(data.reports)]
    legend = "green" if color else f"{OPEN}…{CLOSE}"
    for k in range(min(samples, len(data.train))):
        ids, trained = data.train[k]
        lines.append(f"== sample {k} ({len(ids)} tokens, {int(trained.sum())} trained, marked {legend})")
        erased = data.train.meta(k).get(ERASED_KEY)
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
