"""Execute notebooks/llava_quickstart.ipynb with nbclient, so the demo cannot rot.

The notebook runs in a temporary directory (its ``runs/`` go there, the
repository stays clean), with this checkout first on the kernel's path. Besides
"no cell raised", the test checks what the notebook claims to show: a trained
multimodal model on disk, per-step metrics with the data-wait share, the
trainable-component table, the image and a generated reply.
"""

from __future__ import annotations

import json
from pathlib import Path

from notebook_helpers import executed_notebook, shown_report

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "llava_quickstart.ipynb"


def cell_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def test_llava_quickstart_notebook_runs(tmp_path, monkeypatch):
    executed, text = executed_notebook(NOTEBOOK, monkeypatch, tmp_path)

    run = tmp_path / "runs" / "llava-quickstart" / "run"
    final = run / "final"
    assert (final / "media.safetensors").is_file() and (final / "adapter_config.json").is_file()
    meta = json.loads((final / "mmtune.json").read_text())
    assert meta["family"] == "multimodal_lm" and meta["media"]["image"]["connector"]["kind"] == "mlp2x_gelu"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 2
    assert all(0.0 <= r["data_wait"] <= 1.0 and r["tokens_per_s"] > 0 for r in steps)
    assert any("eval_loss" in r for r in records)
    shown_report(executed, run)

    code = [c for c in executed.cells if c.cell_type == "code"]
    text = "\n".join(cell_text(c) for c in code)
    for component in ("image.encoder", "image.connector", "llm"):
        assert any(line.split()[:1] == [component] for line in text.splitlines()), f"no {component} row"
    # The metrics table printed one line per step.
    assert sum(1 for line in text.splitlines() if line.strip().split()[:1] == [str(len(steps))]) >= 1

    chat_cell = next(c for c in code if "generate_reply(" in c.source)
    assert any("image/png" in o.get("data", {}) for o in chat_cell.outputs), "the image is not shown"
    chat_text = cell_text(chat_cell)
    assert "of them for the image" in chat_text
    reply = chat_text.split("assistant:", 1)[1].strip()
    assert reply, "empty reply"

    assert not (REPO / "notebooks" / "runs").exists()
