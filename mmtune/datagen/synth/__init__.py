"""Synthetic media question sets a small model learns on a CPU: ``mmtune data synth TASK --out DIR``.

No pretrained encoder is available offline, so a multimodal setup proves it reads the media by learning a
task like these on a held-out split, against a control trained on the same rows with the media blanked
(``blank=`` / ``--blank``, or :func:`write_blank_copy` on any generated folder)::

    from mmtune.datagen.synth import generate_synth
    summary = generate_synth("shapes", "data/shapes", train=2000, heldout=500, seed=0, blank="data/shapes-blank")
    summary["chance"]            # majority-answer frequency per question type on the held-out split

A task is a builder in :data:`SYNTH_TASKS`: its keyword parameters are its own options (``--image-size`` ->
``image_size``) and it returns a :class:`SynthSource` that only draws items; splits, media files, LLaVA rows,
cards, ``synth.json`` and the README data card are written by :mod:`.common`, the same for every task. A new
modality is an entry in ``common.MEDIA_KINDS`` (how a file is written and blanked).

Tasks: ``shapes``, ``shapes-pick`` (PNG images, :mod:`.shapes`); ``motion``, ``event-order`` (mp4 clips, rows
``video`` / ``<video>``) and ``av-sync`` (an mp4 with its AAC sound track, one ``<video>`` item) in :mod:`.clips`
(``--frame-size``, ``--frames``, ``--fps``); ``pitch``, ``loudness`` (16 kHz mono WAVs, rows ``audio`` /
``<audio>``) in :mod:`.tones` (``--duration``). Their answers are dealt balanced (chance 1/k); their blanked
control has grey frames (same count and rate) and digital silence (same length), or for ``av-sync`` one of the
two (``blank_only="frames"`` / ``"sound"``). Writing and reading clips and sounds: :mod:`.media` (PyAV).

``edits`` (:mod:`.edits`) writes editing triplets for ``task: edit`` instead of questions: a shapes image, an
instruction ("make the circle red", "move the square left") and the image with exactly that edit, in
diffusers' layout (``OUT/train/metadata.jsonl``); its control (``--blank``) keeps the images and blanks the
instruction, and :func:`score_edit` scores a model's edited image against a row.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mmtune.datagen.synth.clips import build_av_sync, build_event_order, build_motion
from mmtune.datagen.synth.common import (
    MEDIA_KINDS,
    SynthItem,
    SynthQuestion,
    SynthSource,
    check_blank_only,
    check_task_parameters,
    check_writable,
    generate_split_sets,
    write_blank_copy,
)
from mmtune.datagen.synth.edits import LAYOUT as EDIT_LAYOUT
from mmtune.datagen.synth.edits import (
    build_edits,
    generate_edit_sets,
    score_edit,
    write_instruction_blank_copy,
)
from mmtune.datagen.synth.shapes import build_shapes, build_shapes_pick
from mmtune.datagen.synth.tones import build_loudness, build_pitch
from mmtune.errors import ConfigError

SYNTH_TASKS: dict[str, Callable[..., SynthSource]] = {
    "shapes": build_shapes,
    "shapes-pick": build_shapes_pick,
    "motion": build_motion,
    "event-order": build_event_order,
    "av-sync": build_av_sync,
    "pitch": build_pitch,
    "loudness": build_loudness,
    "edits": build_edits,
}


def generate_synth(task: str, out_dir: str | Path, *, train: int = 2000, heldout: int = 500, seed: int = 0,
                   questions_per_item: int = 1, question_types: str | Sequence[str] | None = None,
                   blank: str | Path | None = None, blank_only: str | None = None, overwrite: bool = False,
                   progress: bool = True, **params: Any) -> dict[str, Any]:
    """Write task ``task``'s train and held-out splits into ``out_dir`` (and its blanked control into ``blank``;
    ``blank_only="frames"`` or ``"sound"`` blanks one stream of clips with sound).

    ``params`` are the task's own options (its builder's keyword arguments). Returns the summary written to
    ``out_dir/synth.json``. Deterministic: the same arguments write identical files.
    """
    if task not in SYNTH_TASKS:
        raise ConfigError(f"synth: unknown task '{task}' (valid: {', '.join(SYNTH_TASKS)})")
    builder = SYNTH_TASKS[task]
    check_task_parameters(task, builder, params)
    source = builder(**params)
    if isinstance(question_types, str):
        question_types = [t.strip() for t in question_types.split(",") if t.strip()]
    out_dir = Path(out_dir)
    if blank is not None and Path(blank).resolve() == out_dir.resolve():
        raise ConfigError(f"synth: --blank {blank}: the control needs a folder of its own, not --out")
    if blank_only is not None and blank is None:
        raise ConfigError("synth: --blank-only needs --blank DIR")
    check_blank_only(source.modality, blank_only)
    if blank is not None:  # fail before generating, not after
        check_writable(Path(blank), overwrite)
    types = list(question_types or source.question_types)
    command = shlex.join([
        "mmtune", "data", "synth", task, "--out", "DIR", "--train", str(train), "--heldout", str(heldout),
        "--seed", str(seed), "--questions-per-item", str(questions_per_item), "--question-types", ",".join(types),
        *[arg for name, value in source.parameters.items() for arg in (f"--{name.replace('_', '-')}", str(value))],
    ])
    triplets = source.layout == EDIT_LAYOUT  # rows of (input, instruction, edited image): its own writer
    summary = (generate_edit_sets if triplets else generate_split_sets)(
        source, out_dir, train=train, heldout=heldout, seed=seed, questions_per_item=questions_per_item,
        question_types=question_types, command=command, blank_copy=None if blank is None else str(blank),
        overwrite=overwrite, progress=progress)
    if blank is not None and triplets:
        write_instruction_blank_copy(out_dir, blank, overwrite=overwrite, progress=progress)
    elif blank is not None:
        write_blank_copy(out_dir, blank, only=blank_only, overwrite=overwrite, progress=progress)
    return summary


__all__ = [
    "MEDIA_KINDS", "SYNTH_TASKS", "SynthItem", "SynthQuestion", "SynthSource", "build_av_sync", "build_edits",
    "build_event_order", "build_loudness", "build_motion", "build_pitch", "build_shapes", "build_shapes_pick",
    "generate_synth", "score_edit", "write_blank_copy", "write_instruction_blank_copy",
]
