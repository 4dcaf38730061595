"""Every shipped notebook is executed by a test, so no demo can rot unnoticed (the suite runs them in tests/e2e)."""

from __future__ import annotations

from conftest import REPO


def test_every_notebook_is_executed_by_an_e2e_test():
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    tests = [p.read_text() for p in (REPO / "tests" / "e2e").glob("test_notebook_*.py")]
    executed = [t for t in tests if "executed_notebook(" in t]
    assert len(notebooks) >= 6
    assert [n for n in notebooks if not any(f'"{n}"' in t or f"notebooks/{n}" in t for t in executed)] == []
