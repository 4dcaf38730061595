"""Run a multi-stage recipe: train each stage from the previous one's ``final/``, then report forgetting.

    plan (config.stages) -> for each stage: train (skipped when its final/ exists: resume)
                          -> evaluate its final/ on every held-out set so far (forgetting.evaluate_stage)
                          -> output_dir/forgetting.json + forgetting.md

Each stage is an ordinary run in ``output_dir/<name>/`` (``config.yaml``,
``metrics.jsonl``, checkpoints, ``final/``), so anything that reads a run reads
a stage. Running the recipe again skips finished stages; an unfinished one
resumes from its checkpoints with ``train.resume: auto``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mmtune.config.stages import MultiStagePlan
from mmtune.forgetting import evaluate_stage, forgetting_table, write_report
from mmtune.models.open import MMTUNE_META

log = logging.getLogger("mmtune")


@dataclass
class StagesResult:
    run_dirs: dict[str, Path]
    """Each stage's run directory, by stage name."""
    trained: list[str]
    """The stages trained now (the others had finished before)."""
    report: Path | None
    """``forgetting.json`` (None on the other processes of a multi-process run)."""


def run_stages(plan: MultiStagePlan) -> StagesResult:
    from mmtune.training.loop import train

    sets: list[str] = []
    results: dict[str, dict] = {}
    run_dirs, trained, is_main = {}, [], True
    for stage in plan.stages:
        name, recipe = stage.settings.name, stage.recipe
        run_dir = Path(recipe.output_dir)
        run_dirs[name] = run_dir
        if (run_dir / "final" / MMTUNE_META).is_file():
            log.info("stage %s: finished earlier (%s), skipped", name, run_dir / "final")
        else:
            log.info("stage %s: training in %s", name, run_dir)
            is_main = train(recipe).is_main
            trained.append(name)
        sets += [s for s in stage.settings.held_out if s not in sets]
        if is_main:
            evaluated = [*sets, *(g for g in plan.forgetting.general if g not in sets)]
            results[name] = evaluate_stage(run_dir, evaluated, plan.forgetting, max_length=recipe.data.max_length)
    if not is_main:
        return StagesResult(run_dirs, trained, None)
    all_sets = [*sets, *(g for g in plan.forgetting.general if g not in sets)]
    report = forgetting_table([s.settings.name for s in plan.stages], all_sets, results, plan.forgetting.metrics)
    json_path, md_path = write_report(plan.output_dir, report)
    log.info("forgetting report: %s, %s", json_path, md_path)
    return StagesResult(run_dirs, trained, json_path)
