"""Run reports: one self-contained HTML page per run directory (``mmtune report``, ``train.report: true``).

``run_files`` reads a run (and its stages), ``plots`` draws its curves,
``media`` and ``samples`` show validation samples answered by ``final/``,
``page`` writes the HTML, ``report`` puts them together.
"""

from mmtune.reporting.options import ReportOptions
from mmtune.reporting.report import write_report

__all__ = ["ReportOptions", "write_report"]
