"""Execute notebooks/instructblip_quickstart.ipynb with nbclient, so the demo cannot rot.

Besides "no cell raised", the test checks what the notebook claims to show: synthetic data with its chance
levels, a trained Q-Former run, the instruction in the Q-Former's tokens changing the query outputs, a held-out
evaluation per question type, and an export to transformers' InstructBLIP with the same inputs and logits.
"""

from __future__ import annotations

import json
from pathlib import Path

from notebook_helpers import executed_notebook, shown_report

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "instructblip_quickstart.ipynb"


def test_instructblip_quickstart_notebook_runs(tmp_path, monkeypatch):
    executed, text = executed_notebook(NOTEBOOK, monkeypatch, tmp_path)

    work = tmp_path / "runs" / "instructblip-quickstart"
    assert json.loads((work / "shapes" / "synth.json").read_text())["chance"]
    meta = json.loads((work / "run" / "final" / "mmtune.json").read_text())
    assert meta["media"]["image"]["connector"]["kind"] == "qformer"
    shown_report(executed, work / "run")
    assert (work / "exported" / "qformer_tokenizer").is_dir()

    assert "differ between the questions: True" in text
    assert "held-out exact match:" in text and "position" in text
    assert "InstructBlipForConditionalGeneration | same input ids: True" in text
    difference = float(text.split("max |logit difference|:")[1].split()[0])
    assert difference < 1e-4
