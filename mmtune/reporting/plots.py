"""A run's curves as PNG images embedded in the page (matplotlib, no display, no files).

Figures are built with matplotlib's object API (``Figure``), not ``pyplot``:
no global state, no backend to select, safe to call from any process. Each
chart comes back as a ``data:image/png;base64,...`` URL, so the report stays
one self-contained file.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmtune.reporting.run_files import (
    TASK_EVAL_LOSS,
    TASK_LOSS,
    Forgetting,
    RunFiles,
    Series,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_SIZE, _DPI = (5.6, 3.2), 110


@dataclass
class Chart:
    title: str
    image: str
    """A ``data:image/png;base64,...`` URL."""
    caption: str = ""
    figure: Figure | None = None
    """The matplotlib ``Figure`` drawn into ``image``: its lines' data are what the reader sees (tests read them)."""


def png_data_url(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _chart(title: str, figure: Figure, caption: str = "") -> Chart:
    return Chart(title, png_data_url(figure), caption, figure)


def _figure():
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=_SIZE)
    ax = figure.subplots()
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, ax


def _plot(ax, series: Series, label: str, **style) -> bool:
    if not series.steps:
        return False
    marker = "o" if len(series.steps) < 30 else None  # a few points (eval) read better as dots
    ax.plot(series.steps, series.values, label=label, marker=style.pop("marker", marker), markersize=3, **style)
    return True


def loss_chart(run: RunFiles) -> Chart | None:
    figure, ax = _figure()
    drawn = _plot(ax, run.series("loss"), "train loss", marker=None)
    drawn |= _plot(ax, run.series("eval_loss"), "eval loss", color="C3")
    if not drawn:
        return None
    ax.set_ylabel("loss")
    ax.legend()
    return _chart("Loss", figure, "training loss per logged step; eval loss on the validation split")


def task_loss_chart(run: RunFiles) -> Chart | None:
    """A multi-task run: each task's training loss (solid) and eval loss (dashed, same colour)."""
    train_keys, eval_keys = run.keys_with_prefix(TASK_LOSS), run.keys_with_prefix(TASK_EVAL_LOSS)
    tasks = list(dict.fromkeys([k[len(TASK_LOSS):] for k in train_keys] + [k[len(TASK_EVAL_LOSS):] for k in eval_keys]))
    if not tasks:
        return None
    figure, ax = _figure()
    for i, task in enumerate(tasks):
        _plot(ax, run.series(TASK_LOSS + task), f"{task} (train)", color=f"C{i % 10}", marker=None)
        _plot(ax, run.series(TASK_EVAL_LOSS + task), f"{task} (eval)", color=f"C{i % 10}", linestyle="--")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    return _chart("Loss per task", figure,
                  f"{TASK_LOSS}<task> (solid) and {TASK_EVAL_LOSS}<task> (dashed) from metrics.jsonl")


def lr_chart(run: RunFiles) -> Chart | None:
    figure, ax = _figure()
    if not _plot(ax, run.series("lr"), "learning rate", marker=None):
        return None
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _chart("Learning rate", figure, "the first parameter group's learning rate after each step")


def throughput_chart(run: RunFiles) -> Chart | None:
    key = run.throughput_key()
    figure, ax = _figure()
    if key is None or not _plot(ax, run.series(key), key, marker=None):
        return None
    ax.set_ylabel(key.replace("_per_s", "/s"))
    ax.set_ylim(bottom=0)
    return _chart("Throughput", figure, f"{key}: targets trained per second between logged steps")


def data_wait_chart(run: RunFiles) -> Chart | None:
    """The share of step time spent waiting for batches: high means the run is data-bound (more workers)."""
    wait = run.series("data_wait")
    figure, ax = _figure()
    if not _plot(ax, Series(wait.steps, [100 * v for v in wait.values]), "data wait", color="C1", marker=None):
        return None
    ax.set_ylabel("data wait (% of step time)")
    ax.set_ylim(bottom=0)
    return _chart("Data wait", figure,
                  "time spent fetching batches from the DataLoader workers, as a share of the time between logged steps")


def grad_norm_chart(run: RunFiles) -> Chart | None:
    figure, ax = _figure()
    if not _plot(ax, run.series("grad_norm"), "gradient norm", marker=None):
        return None
    ax.set_ylabel("gradient norm (before clipping)")
    return _chart("Gradient norm", figure)


def run_charts(run: RunFiles) -> list[Chart]:
    """Every chart the run's records allow, in reading order."""
    charts = (loss_chart(run), task_loss_chart(run), lr_chart(run), grad_norm_chart(run), throughput_chart(run),
              data_wait_chart(run))
    return [c for c in charts if c is not None]


def forgetting_chart(forgetting: Forgetting) -> Chart:
    """Each set's metric after each stage: a set learnt early and falling later is forgetting."""
    figure, ax = _figure()
    ax.set_xlabel("after stage")
    positions = range(len(forgetting.stages))
    for i, name in enumerate(forgetting.sets):
        points = [(x, forgetting.table.get(stage, {}).get(name)) for x, stage in zip(positions, forgetting.stages)]
        points = [(x, v) for x, v in points if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=4, label=name, color=f"C{i % 10}")
    ax.set_xticks(list(positions), forgetting.stages)
    ax.set_ylabel(forgetting.metric)
    ax.legend(fontsize="small")
    return _chart(f"{forgetting.metric} per set across stages", figure)
