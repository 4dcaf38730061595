"""What the executed demo notebooks are checked for alike: the report of the run they trained, written and shown."""

from __future__ import annotations

import html
from pathlib import Path


def shown_report(executed, run_dir: Path) -> str:
    """``run_dir``'s ``report.html``, after checking that a cell wrote it and showed that very page inline."""
    page = (run_dir / "report.html").read_text()
    cell = next(c for c in executed.cells if c.cell_type == "code" and "write_report(" in c.source)
    shown = [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    assert len(shown) == 1 and f'srcdoc="{html.escape(page)}"' in shown[0], "the report is not shown inline"
    assert "<h3>Loss</h3>" in page  # the curves of the run it trained
    return page


def executed_notebook(path: Path, monkeypatch, cwd: Path):
    """``path`` (stored without outputs) executed top to bottom in ``cwd`` with this checkout's mmtune, and the text
    its cells printed."""
    import os

    import nbclient
    import nbformat

    stored = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), "store the notebook without outputs"
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    executed = nbclient.NotebookClient(stored, timeout=600, kernel_name="python3",
                                       resources={"metadata": {"path": str(cwd)}}).execute()
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
    return executed, text
