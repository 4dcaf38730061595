"""notebooks/data_design.ipynb runs top to bottom (nbclient), so the walkthrough cannot rot."""

from __future__ import annotations

from conftest import REPO
from notebook_helpers import executed_notebook


def test_data_design_notebook_executes(monkeypatch):
    _, outputs = executed_notebook(REPO / "notebooks" / "data_design.ipynb", monkeypatch, REPO / "notebooks")
    assert "kept as metadata" in outputs and "Verification: Is the answer correct?" in outputs
    assert "final_accuracy" in outputs  # the demonstration's figures were read and printed
    assert "max |combined - formula| = 0.0" in outputs  # proxy logits are exactly the formula
