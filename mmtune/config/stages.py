"""Multi-stage recipes (sequential instruction tuning): one file, several runs, each from the previous one.

A multi-stage recipe is a base recipe (every top-level key but ``stages``,
``stage_adapter`` and ``forgetting``) and a list of stages. Each stage is a
partial recipe deep-merged over the base (mappings merge key by key; lists and
values replace), plus its own keys (:class:`~mmtune.config.schema.StageSettings`:
``name``, ``replay``, ``held_out``). Stage ``name`` trains in
``output_dir/<name>/`` and starts from the previous stage's ``final/``
(``init_from``, with ``stage_adapter``); ``replay: f`` mixes the earlier
stages' training datasets into it as ``f`` of its samples. Each stage is then an
ordinary :class:`SftRecipe`, validated on its own, so an error names its stage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtune.config.loader import read_with_overrides, validate_as, validate_recipe
from mmtune.config.schema import (
    ForgettingConfig,
    MultiStageSettings,
    Recipe,
    SftRecipe,
    StageSettings,
)
from mmtune.errors import ConfigError


@dataclass(frozen=True)
class Stage:
    settings: StageSettings
    recipe: SftRecipe


@dataclass(frozen=True)
class MultiStagePlan:
    output_dir: Path
    """The base ``output_dir``: the stages' run directories and the forgetting report are in it."""
    stages: list[Stage]
    forgetting: ForgettingConfig


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_training(path: str | Path, overrides: list[str] | None = None) -> Recipe | MultiStagePlan:
    """What ``mmtune train`` runs: one recipe, or the stages of a multi-stage recipe (it has ``stages``)."""
    raw, source, override_keys = read_with_overrides(path, overrides)
    if "stages" in raw:
        return plan_stages(raw, source=source)
    return validate_recipe(raw, source=source, override_keys=override_keys)


def load_stages(path: str | Path, overrides: list[str] | None = None) -> MultiStagePlan:
    raw, source, _ = read_with_overrides(path, overrides)
    return plan_stages(raw, source=source)


def plan_stages(raw: dict[str, Any], *, source: str = "recipe") -> MultiStagePlan:
    plan_keys = set(MultiStageSettings.model_fields)
    settings = validate_as(MultiStageSettings, {k: v for k, v in raw.items() if k in plan_keys}, source=source)
    base = {k: v for k, v in raw.items() if k not in plan_keys}
    if base.get("task", "sft") != "sft":
        raise ConfigError(f"{source}: task: multi-stage recipes train task 'sft', got {base['task']!r}")
    output_dir = Path(base.get("output_dir", Recipe.model_fields["output_dir"].default))
    stage_keys = set(StageSettings.model_fields)
    stages: list[Stage] = []
    for i, entry in enumerate(settings.stages):
        where = f"{source}: stages[{i}]"
        own = validate_as(StageSettings, {k: v for k, v in entry.items() if k in stage_keys}, source=where)
        where = f"{source}: stages[{i}] ({own.name})"
        if any(s.settings.name == own.name for s in stages):
            raise ConfigError(f"{where}: name: another stage is named '{own.name}' (each has its own run directory)")
        for key in ("output_dir", "task") + (("init_from",) if stages else ()):
            if key in entry:
                raise ConfigError(f"{where}: {key}: set by the multi-stage recipe (output_dir/<name>, task sft, "
                                  "each stage from the previous one's final/ via stage_adapter)")
        merged = deep_merge(base, {k: v for k, v in entry.items() if k not in stage_keys})
        merged["output_dir"] = str(output_dir / own.name)
        if stages:
            merged["init_from"] = {"run": stages[-1].recipe.output_dir, "adapter": settings.stage_adapter}
        if own.replay:
            if not stages:
                raise ConfigError(f"{where}: replay: the first stage has no earlier stage to replay")
            data = dict(merged.get("data") or {})
            data["replay"] = [spec.model_dump(mode="json", exclude_unset=True)
                              for s in stages for spec in s.recipe.data.datasets]
            data["replay_fraction"] = own.replay
            merged["data"] = data
        recipe = validate_recipe(merged, source=where)
        stages.append(Stage(own, recipe))
    return MultiStagePlan(output_dir, stages, settings.forgetting)
