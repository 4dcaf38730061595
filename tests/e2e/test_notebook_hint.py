"""Execute notebooks/hint.ipynb with nbclient, so the walkthrough cannot rot.

Besides "no cell raised", it checks what the notebook claims to show: the 30 / 10 task split, a short HINT run
whose every step logs per-task losses, different adapters for different instructions, the adapter written by
``mmtune hint adapt`` equal to the hypernetwork through peft alone, the per-instance cost of a ~300-token
instruction, the demonstration's recorded figures, and the run's report shown inline.
"""

from __future__ import annotations

import re
from pathlib import Path

from notebook_helpers import executed_notebook, shown_report

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "hint.ipynb"


def test_hint_notebook_runs(monkeypatch):
    executed, text = executed_notebook(NOTEBOOK, monkeypatch, REPO / "notebooks")

    assert "30 training tasks, 10 held out" in text
    steps = re.findall(r"step (\d+): loss ([0-9.]+), (\d+) tasks in the batch", text)
    assert [int(s) for s, _, _ in steps] == list(range(1, 7)) and all(int(n) > 1 for _, _, n in steps)
    differences = [float(v) for v in re.findall(r"\|B_asc - B_desc\| / \|B_asc\| = ([0-9.]+)", text)]
    assert len(differences) == 3 and all(d > 0 for d in differences)
    assert "peft type LORA | rank 16" in text  # the LLM's rank-8 LoRA and the generated rank-8 one, as one
    gap = float(re.search(r"max \|peft adapter - hypernetwork\| over the logits: (\S+)", text).group(1))
    assert gap < 1e-4
    saving = float(re.search(r"HINT [0-9.]+ GFLOPs \(([0-9.]+)x less\)", text).group(1))
    assert saving > 3
    assert all(re.search(rf"^{name}\s+[0-9.]+\s+[0-9.]+", text, re.M)
               for name in ("plain", "hint", "hint_fusion", "no_instruction"))
    page = shown_report(executed, Path(re.search(r"^(\S+report\.html)$", text, re.M).group(1)).parent)
    assert "task_loss/" in page
