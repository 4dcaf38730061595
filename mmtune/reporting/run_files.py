"""Reading what a run directory holds: its recipe, metric records, summary, stages and forgetting table.

A run directory (``mmtune train``) holds ``config.yaml``, ``metrics.jsonl``
(one JSON object per logged step; evaluation records carry ``eval_loss``, a
multi-task run adds ``task_loss/<task>`` and ``eval_loss/<task>``),
``summary.json`` and ``final/``. A multi-stage run directory holds one run
directory per stage and, when its stages were evaluated on earlier stages'
sets, ``forgetting.json``::

    {"metric": str, "sets": [name, ...], "stages": [name, ...], "table": {stage: {set: value}}}

Everything here is read once into plain data; a file that does not parse is
one line naming it (and its line, for ``metrics.jsonl``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmtune.errors import ConfigError, DataError

METRICS, SUMMARY, CONFIG, FORGETTING = "metrics.jsonl", "summary.json", "config.yaml", "forgetting.json"
TASK_LOSS, TASK_EVAL_LOSS = "task_loss/", "eval_loss/"
"""Prefixes of a multi-task run's per-task metric keys (``task_loss/<task>``, ``eval_loss/<task>``)."""


@dataclass
class Series:
    """One metric over steps (a step logged twice, as after a resume, keeps its last value)."""

    steps: list[int]
    values: list[float]


@dataclass
class Forgetting:
    """``forgetting.json``: the metric of every evaluated set after every stage (None where not evaluated)."""

    metric: str
    sets: list[str]
    stages: list[str]
    table: dict[str, dict[str, float | None]]


@dataclass
class RunFiles:
    """One run directory, read; a multi-stage run has ``stages`` (each a run of its own) and maybe ``forgetting``."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    """``config.yaml`` as YAML (not validated: a report shows runs of any age)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    stages: list[RunFiles] = field(default_factory=list)
    forgetting: Forgetting | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def final_dir(self) -> Path | None:
        """``final/``, when training got that far."""
        return self.path / "final" if (self.path / "final").is_dir() else None

    def series(self, key: str) -> Series:
        """``key`` over steps, in step order; non-numeric and non-finite values are not plotted."""
        by_step: dict[int, float] = {}
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                by_step[int(record["step"])] = float(value)
        steps = sorted(by_step)
        return Series(steps, [by_step[s] for s in steps])

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Metric keys starting with ``prefix``, in the order they first appear."""
        return list(dict.fromkeys(k for r in self.records for k in r if k.startswith(prefix)))

    def throughput_key(self) -> str | None:
        """The targets-per-second key the task logs (``tokens_per_s`` for SFT, ``samples_per_s`` for edit)."""
        return next((k for k in self.keys_with_prefix("") if k.endswith("_per_s")), None)


def _is_run(path: Path) -> bool:
    return any((path / name).is_file() for name in (METRICS, SUMMARY, CONFIG))


def read_run(path: str | Path) -> RunFiles:
    """The run at ``path``; a missing directory, or one that holds neither a run nor stages, is one line."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"report: {path}: no such run directory")
    stage_dirs = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
    if not _is_run(path) and not stage_dirs:
        raise ConfigError(f"report: {path}: not a run directory (no {CONFIG}, {METRICS} or {SUMMARY}, and no "
                          "stage directory holding them)")
    run = RunFiles(path, config=_read_config(path), records=_read_metrics(path), summary=_read_json(path / SUMMARY))
    if (path / FORGETTING).is_file():
        run.forgetting = read_forgetting(path / FORGETTING)
    if stage_dirs:
        order = run.forgetting.stages if run.forgetting else []
        stage_dirs.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
        run.stages = [read_run(p) for p in stage_dirs]
    return run


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    if not file.is_file():
        return {}
    try:
        config = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataError(f"{file}: not valid YAML ({str(exc).splitlines()[0]})", reason="malformed YAML") from None
    return config if isinstance(config, dict) else {}


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}: malformed JSON ({exc.msg} at line {exc.lineno})", reason="malformed JSON") from None
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object, got {type(data).__name__}", reason="malformed JSON")
    return data


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    file = path / METRICS
    if not file.is_file():
        return []
    records = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{lineno}: malformed JSON ({exc.msg})", reason="malformed JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DataError(f"{file}:{lineno}: a metrics record is a JSON object with an integer 'step'",
                            reason="bad field")
        records.append(record)
    return records


def read_forgetting(file: Path) -> Forgetting:
    """``forgetting.json`` checked against its agreed shape; a wrong field is one line naming it."""
    data = _read_json(file)

    def names(key: str) -> list[str]:
        value = data.get(key)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DataError(f"{file}: field '{key}': expected a list of names", reason="bad field")
        return value

    if not isinstance(data.get("metric"), str):
        raise DataError(f"{file}: field 'metric': expected the metric's name (a string)", reason="bad field")
    sets, stages = names("sets"), names("stages")
    table = data.get("table")
    if not isinstance(table, dict):
        raise DataError(f"{file}: field 'table': expected {{stage: {{set: value}}}}", reason="bad field")
    checked: dict[str, dict[str, float | None]] = {}
    for stage, row in table.items():
        if stage not in stages:
            raise DataError(f"{file}: field 'table.{stage}': not one of the stages {stages}", reason="bad field")
        if not isinstance(row, dict):
            raise DataError(f"{file}: field 'table.{stage}': expected {{set: value}}", reason="bad field")
        for name, value in row.items():
            if name not in sets:
                raise DataError(f"{file}: field 'table.{stage}.{name}': not one of the sets {sets}", reason="bad field")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DataError(f"{file}: field 'table.{stage}.{name}': expected a number or null", reason="bad field")
        checked[stage] = {name: row.get(name) for name in sets}
    return Forgetting(data["metric"], sets, stages, checked)
