"""mmtune: instruction tuning for any Hugging Face causal LM, from text, images, video and audio.

The Python API is small: ``mmtune.train(recipe)`` runs a recipe (a YAML path,
a dict, or a validated recipe object), and the building blocks it uses are
importable on their own (see README.md and docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.config.loader import load_recipe, validate_recipe
from mmtune.config.schema import TASK_RECIPES, Recipe, SftRecipe
from mmtune.errors import ConfigError, DataError, MmtuneError, ModelError, TrainingError

if TYPE_CHECKING:
    from mmtune.training.loop import RunResult

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "DataError", "MmtuneError", "ModelError", "Recipe", "SftRecipe", "TrainingError",
    "load_recipe", "train", "validate_recipe",
]


def train(recipe: Recipe | str | Path | dict[str, Any], overrides: list[str] | None = None) -> "RunResult":
    """Run a training recipe; returns the run directory, step count, final loss and model path.

    With ``train.report: true`` the run's ``report.html`` is written when training ends (``mmtune report``).
    """
    from mmtune.training.loop import train as run_recipe

    if isinstance(recipe, (str, Path)):
        recipe = load_recipe(recipe, overrides)
    elif isinstance(recipe, dict):
        recipe = validate_recipe(recipe, source="recipe dict")
    elif overrides:
        raise ConfigError("overrides apply to a recipe file or dict, not to a Recipe object")
    task_recipe = TASK_RECIPES.get(recipe.task)
    if task_recipe is None or not isinstance(recipe, task_recipe):
        raise ConfigError(f"train: a {type(recipe).__name__} is not a recipe of task '{recipe.task}'; build one with "
                          f"{task_recipe.__name__ if task_recipe else 'a task recipe class'} (or pass a dict or a YAML path)")
    result = run_recipe(recipe)
    if recipe.train.report and result.is_main:
        from mmtune.reporting import write_report

        write_report(result.run_dir)
    return result
