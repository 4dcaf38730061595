"""Experiment trackers of a run (``train.report_to``): accelerate's, opened on the main process only.

accelerate already speaks to every common tracker (TensorBoard, wandb, MLflow,
Aim, Comet, ClearML, DVCLive, SwanLab, Trackio) through one interface
(``accelerate.tracking.GeneralTracker``: ``start``, ``store_init_configuration``,
``log``, ``finish``); mmtune adds only what a recipe needs around it:

* a missing package is one line naming the key and what to install, said
  before the model loads (:func:`check_trackers`, from ``setup.start_runtime``);
* where each tracker writes: TensorBoard in ``output_dir/tensorboard``, offline
  wandb and MLflow's file store inside ``output_dir`` (``train.tracker_offline``);
* the recipe, flattened to ``section.key`` scalars, as the run's configuration.

The trackers are built here rather than through ``Accelerator(log_with=...)`` so
that only the main process ever constructs one: the others never import a
tracker package, open a file or touch a network.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from mmtune.config.schema import Recipe, TrainConfig
from mmtune.errors import ConfigError

TRACKER_PACKAGES: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "aim": ("aim", "aim"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "swanlab": ("swanlab", "swanlab"),
    "trackio": ("trackio", "trackio"),
}
"""Tracker name -> (the module it imports, the pip package that provides it)."""


def check_trackers(train: TrainConfig) -> None:
    """One line naming ``train.report_to`` and the pip package, for the first tracker whose package is missing."""
    for name in train.trackers():
        module, package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.report_to: '{name}' needs the {package} package (pip install {package}), "
                              f"or leave '{name}' out of train.report_to")


def flat_config(recipe: Recipe) -> dict[str, str | int | float | bool]:
    """The recipe as ``section.key`` -> scalar (lists and mappings as JSON, null as ``"null"``): what every tracker
    accepts as hyperparameters (TensorBoard's take no ``None`` and no list)."""
    out: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif value is None:
            out[prefix] = "null"
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = json.dumps(value)

    walk("", recipe.model_dump(mode="json"))
    return out


def _tracker(name: str, train: TrainConfig, run_dir: Path, project: str):
    """accelerate's tracker ``name``, writing where this run's files are."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":  # accelerate writes to logging_dir / run_name
        return cls("tensorboard", run_dir)
    if name == "wandb":
        kwargs = {"dir": str(run_dir), "name": run_dir.name}
        if train.tracker_offline:
            kwargs["mode"] = "offline"
        return cls(project, **kwargs)
    if name == "mlflow":
        if train.tracker_offline:
            import mlflow

            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        return cls(project, run_name=run_dir.name)
    if cls.requires_logging_directory:  # aim
        return cls(project, run_dir)
    return cls(project)


def open_trackers(recipe: Recipe, run_dir: Path) -> list:
    """Start the recipe's trackers (call on the main process only) and give each the flattened recipe."""
    train = recipe.train
    check_trackers(train)
    project = train.tracker_project or Path(recipe.output_dir).resolve().name
    config = flat_config(recipe)
    trackers = []
    for name in train.trackers():
        tracker = _tracker(name, train, run_dir, project)
        tracker.start()
        tracker.store_init_configuration(config)
        trackers.append(tracker)
    return trackers
