"""``mmtune report RUN_DIR``: read the run, answer a few validation samples with ``final/``, write one HTML page.

    run directory --(run_files)--> records, summary, stages, forgetting --(plots)--> charts
                  --(samples: final/ answers greedily)--> samples           --(page)--> report.html

The page is written atomically (a reader never sees half a report). A
multi-stage run's samples come from its own ``final/`` if it has one, else
from its last stage's: the model the run ends with.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmtune.reporting.options import ReportOptions
from mmtune.reporting.page import render_page
from mmtune.reporting.run_files import RunFiles, read_run
from mmtune.reporting.samples import SampleSection, validation_samples
from mmtune.utils.atomic import atomic_write_text

log = logging.getLogger("mmtune")
REPORT = "report.html"


def final_run(run: RunFiles) -> RunFiles:
    """The run whose ``final/`` the samples come from: the run itself, or its last stage."""
    if run.final_dir() is not None or not run.stages:
        return run
    return final_run(run.stages[-1])


def write_report(run_dir: str | Path, *, out: str | Path | None = None, options: ReportOptions | None = None) -> Path:
    """Write the report of the run at ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``); return its path."""
    options = options or ReportOptions()
    options.check()
    run = read_run(run_dir)
    samples: SampleSection | None = None
    if options.samples:
        samples = validation_samples(final_run(run).path, options)
        if samples.note:
            log.warning("report: %s", samples.note)
    target = Path(out) if out is not None else run.path / REPORT
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, render_page(run, samples, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z")))
    return target
