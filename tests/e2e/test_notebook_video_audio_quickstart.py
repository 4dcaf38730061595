"""Execute notebooks/video_audio_quickstart.ipynb with nbclient, so the demo cannot rot.

Besides "no cell raised", the test checks what the notebook claims to show: the frame indices of uniform,
headtail and fps sampling on a shipped clip, a shipped sound's clips as ImageBind-style filterbanks, synthetic
motion data with its blanked control, the tiny video recipe trained its steps with finite losses, a video's
token count, one audio-visual batch whose sound positions follow the video's, a chat reply, and the held-out
evaluation of the run and of its control over the whole held-out split.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from notebook_helpers import executed_notebook, shown_report

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "video_audio_quickstart.ipynb"


def test_video_audio_quickstart_notebook_runs(tmp_path, monkeypatch):
    executed, text = executed_notebook(NOTEBOOK, monkeypatch, tmp_path)

    # 1. the data: a 16-frame clip at 8 fps, sampled three ways; a 2-s sound as three 2-s filterbanks
    assert "uniform   frames [0, 2, 4, 6, 8, 10, 12, 14]" in text
    assert "fps       frames [0, 4, 8, 12]" in text
    headtail = json.loads(text.split("headtail  frames ")[1].splitlines()[0])
    assert len(headtail) == 8 and headtail == sorted(headtail)
    assert len([i for i in headtail if i < 8]) == 4 and len(set(headtail)) == 8  # half from each half
    assert "filterbanks: (3, 204, 128)" in text
    images = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert len(images) >= 4 and all("image/png" in o["data"] for o in images)

    # 2. synthetic motion data and its blanked control
    work = tmp_path / "runs" / "video-audio-quickstart"
    synth = json.loads((work / "motion" / "synth.json").read_text())
    assert synth["chance"]["overall"] == pytest.approx(0.25)
    heldout = len(json.loads((work / "motion" / "heldout.json").read_text()))
    assert heldout == len(json.loads((work / "motion-blank" / "heldout.json").read_text())) > 0
    shown_report(executed, work / "video-run")

    # 3. the video recipe trained its steps; token counts; one audio-visual batch
    for run in ("video-run", "video-run-blank"):
        summary = json.loads((work / run / "summary.json").read_text())
        metrics = [json.loads(line) for line in (work / run / "metrics.jsonl").read_text().splitlines()]
        assert summary["steps"] == len(metrics) == 8
        assert all(math.isfinite(m["loss"]) for m in metrics)
        meta = json.loads((work / run / "final" / "mmtune.json").read_text())
        assert meta["media"]["video"]["connector"]["kind"] == "qformer"
    assert "token_count rule, evaluation: uniform:8:fixed:8 | training: headtail:8:fixed:8" in text
    assert "video positions per item: 8 of" in text
    assert "-> output (1, 8, 64)" in text
    assert re.search(r"video  values \(\d+, 16, 3, 32, 32\)", text)
    assert re.search(r"audio  values \(\d+, 1, 204, 128\)", text)
    assert "audio follows its video: True" in text

    # 4. chat and evaluation over the whole held-out split, the run and its control
    assert "| reply type: str" in text
    for name in ("frames", "blanked control"):
        line = next(line for line in text.splitlines() if line.startswith(f"{name} ") and "held-out exact match" in line)
        count = int(line.split(" over ")[1].split()[0])
        accuracy = float(line.split("held-out exact match ")[1].split()[0])
        assert count == heldout and 0.0 <= accuracy <= 1.0

    # 5. the export notes: Video-LLaMA's layout stays in mmtune's format, and says why
    assert "export --format hf-instructblipvideo:" in text and "mmtune's format" in text
