"""``mmtune report`` from hand-written run directories (no model, no training): a multi-stage, multi-task run with
its forgetting table, text escaped, runs without final/, and bad input as one line."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mmtune.cli import main
from mmtune.errors import ConfigError, DataError
from mmtune.reporting import ReportOptions, write_report
from mmtune.reporting.run_files import read_run
from mmtune.reporting.samples import first_trained_span, spread

FORGETTING = {"metric": "vqa_accuracy", "sets": ["captions", "vqa"], "stages": ["pretrain", "instruct"],
              "table": {"pretrain": {"captions": 0.61, "vqa": None}, "instruct": {"captions": 0.47, "vqa": 0.72}}}


def write_stage(path: Path, *, tasks: list[str] = (), steps: int = 4, dataset: str = "d.jsonl") -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("task: sft\nmodel:\n  name: tiny\nmethod:\n  name: lora\n")
    records = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 3.0 / step, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0 * step,
                  "data_wait": 0.1}
        record.update({f"task_loss/{t}": 2.0 / step + k for k, t in enumerate(tasks)})
        records.append(record)
        if step % 2 == 0:
            records.append({"step": step, "eval_loss": 2.5 / step, **{f"eval_loss/{t}": 2.2 / step for t in tasks}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (path / "summary.json").write_text(json.dumps({
        "steps": steps, "final_loss": 3.0 / steps, "targets_seen": 999,
        "skipped_while_batching": {"unreadable image": 2},
        "packing_utilisation": 0.875, "widened_conv_in": True,
        "data": [{"name": dataset, "rows": 41, "samples": 37, "truncated": 3, "media": {"image": 30},
                  "media_cut": {"image": 1}, "skipped": {"missing image": 4}, "examples": {"missing image": "row 9"},
                  "from_cache": True, "erased": 0}],
        "trainable": [{"component": "llm", "method": "lora", "trainable": 1234, "total": 100000},
                      {"component": "image.encoder", "method": "frozen", "trainable": 0, "total": 5000}]}))
    return path


def charts_of(page: str) -> dict[str, bytes]:
    return {title: base64.b64decode(data) for title, data in
            re.findall(r'<h3>([^<]+)</h3><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)}


def test_a_multi_stage_multi_task_run_shows_each_stage_its_task_curves_and_the_forgetting_table(tmp_path):
    run = tmp_path / "run"
    # Named so that alphabetical order (instruct < pretrain) is wrong: forgetting.json's stage order wins.
    write_stage(run / "pretrain")
    write_stage(run / "instruct", tasks=["vqa", "captions"], dataset="<script>alert(1)</script>.jsonl")
    (run / "forgetting.json").write_text(json.dumps(FORGETTING))
    page = write_report(run, options=ReportOptions(samples=0)).read_text()

    assert page.index("Stage 1: pretrain") < page.index("Stage 2: instruct")
    table = page[page.index("<h2>Forgetting: vqa_accuracy</h2>"):]
    assert "<td>pretrain</td><td class=num>0.6100</td><td class=num><span class=\"muted\">–</span></td>" in table
    assert "<td>instruct</td><td class=num>0.4700</td><td class=num>0.7200</td>" in table
    charts = charts_of(page)
    assert "vqa_accuracy per set across stages" in charts and "Loss per task" in charts
    assert page.count("<h3>Loss per task</h3>") == 1  # only the multi-task stage has per-task curves
    assert page.count("<h3>Loss</h3>") == 2 and all(png.startswith(b"\x89PNG") for png in charts.values())
    # Data report, batching skips, trainable table, the rest of summary.json; text escaped everywhere.
    assert "<td class=num>41</td><td class=num>37</td><td class=num>3</td><td>30 image</td><td>1 image</td>" in page
    assert "4 missing image" in page and "row 9" in page and "2 (unreadable image)" in page
    assert "<td>llm</td><td>lora</td><td class=num>1,234</td><td class=num>100,000</td>" in page
    assert "<b>1,234</b>" in page and "87.5 %" in page and "widened_conv_in" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;.jsonl" in page
    # The stage table at the top: steps, final loss, last eval loss per stage.
    assert "<td>pretrain</td><td>sft</td><td>lora</td><td class=num>4</td><td class=num>0.7500</td>" in page


def test_a_step_logged_twice_keeps_its_last_value_and_series_skip_other_records(tmp_path):
    run = write_stage(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as fh:  # a resumed run logs step 4 again
        fh.write(json.dumps({"step": 4, "loss": 0.1}) + "\n")
    loss = read_run(run).series("loss")
    assert loss.steps == [1, 2, 3, 4] and loss.values[-1] == 0.1
    assert read_run(run).series("eval_loss").steps == [2, 4]
    assert read_run(run).throughput_key() == "tokens_per_s"


def test_a_run_without_final_or_without_a_prompt_to_ask_says_so_instead_of_samples(tmp_path):
    run = write_stage(tmp_path / "run")
    page = write_report(run, out=tmp_path / "r.html", options=ReportOptions(samples=3)).read_text()
    assert "has no final/ model (training did not finish)" in page
    assert not (run / "report.html").exists()
    (run / "final").mkdir()
    (run / "config.yaml").write_text("task: sft\nmodel:\n  name: tiny\ndata:\n  train_on_prompt: true\n")
    page = write_report(run, options=ReportOptions(samples=3)).read_text()
    assert "data.train_on_prompt: every token was trained" in page


@pytest.mark.parametrize("change, message", [
    ({"metric": 3}, "field 'metric'"),
    ({"stages": "pretrain"}, "field 'stages'"),
    ({"table": {"finetune": {}}}, "field 'table.finetune': not one of the stages"),
    ({"table": {"pretrain": {"ocr": 0.1}}}, "field 'table.pretrain.ocr': not one of the sets"),
    ({"table": {"pretrain": {"vqa": "high"}}}, "field 'table.pretrain.vqa': expected a number or null"),
])
def test_a_bad_forgetting_file_is_one_line_naming_the_field(tmp_path, change, message):
    run = write_stage(tmp_path / "run" / "pretrain").parent
    (run / "forgetting.json").write_text(json.dumps({**FORGETTING, **change}))
    with pytest.raises(DataError, match=re.escape(message)) as info:
        write_report(run, options=ReportOptions(samples=0))
    assert "forgetting.json" in str(info.value) and "\n" not in str(info.value)


def test_bad_run_directories_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(tmp_path)]) == 2  # exists, but holds no run
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mmtune: error: report: {tmp_path / 'missing'}: no such run directory",
                   (f"mmtune: error: report: {tmp_path}: not a run directory (no config.yaml, metrics.jsonl or "
                    "summary.json, and no stage directory holding them)")]
    run = write_stage(tmp_path / "run")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: malformed JSON"):
        write_report(run, options=ReportOptions(samples=0))
    with pytest.raises(ConfigError, match="--samples must be 0 or more"):
        write_report(run, options=ReportOptions(samples=-1))


def test_samples_spread_over_the_split_and_the_reference_is_the_first_trained_span():
    assert spread(10, 3) == [0, 4, 9] and spread(2, 8) == [0, 1] and spread(0, 8) == [] and spread(5, 0) == []
    trained = np.array([0, 0, 0, 1, 1, 0, 0, 1], dtype=bool)
    assert first_trained_span(trained) == (3, 5)
    assert first_trained_span(np.array([1, 0, 1, 1], dtype=bool)) == (2, 4)  # token 0 is never a target


def _decoded(url: str, prefix: str) -> bytes:
    assert url.startswith(prefix)
    return base64.b64decode(url[len(prefix):])


def test_media_views_thumbnail_strip_play_and_name_what_they_cannot_read(tmp_path):
    """An image shrinks to a thumbnail, a video becomes a strip of its clip window's frames (each frame its own
    colour), an audio item a WAV of its window, and an unreadable file one line naming it."""
    import io
    import wave

    from media_helpers import write_video, write_wav
    from PIL import Image

    from mmtune.modalities.base import MediaItem
    from mmtune.reporting.media import STRIP_FRAME_PX, THUMBNAIL_PX, media_view

    Image.new("RGB", (640, 320), (200, 30, 30)).save(tmp_path / "big.png")
    view = media_view(MediaItem("image", str(tmp_path / "big.png")))
    with Image.open(io.BytesIO(_decoded(view.url, "data:image/png;base64,"))) as thumb:
        assert view.kind == "image" and thumb.size == (THUMBNAIL_PX, THUMBNAIL_PX // 2)

    video = write_video(tmp_path / "v.mp4", frames=16, size=32, fps=8)
    strip = media_view(MediaItem("video", str(video), options={"start": 1.0}))  # frames 8..15
    with Image.open(io.BytesIO(_decoded(strip.url, "data:image/png;base64,"))) as shown:
        assert strip.kind == "strip" and shown.size == (8 * STRIP_FRAME_PX + 7 * 2, STRIP_FRAME_PX)
        centres = [shown.getpixel((k * (STRIP_FRAME_PX + 2) + STRIP_FRAME_PX // 2, STRIP_FRAME_PX // 2))
                   for k in range(8)]
    assert len(set(centres)) == 8  # eight different frames, not one repeated

    audio = media_view(MediaItem("audio", str(write_wav(tmp_path / "a.wav", seconds=2.0)), options={"end": 0.5}))
    with wave.open(io.BytesIO(_decoded(audio.url, "data:audio/wav;base64,"))) as clip:
        assert audio.kind == "audio" and clip.getframerate() == 16000 and clip.getnframes() == 8000

    (tmp_path / "broken.png").write_bytes(b"not an image")
    broken = media_view(MediaItem("image", str(tmp_path / "broken.png")))
    assert broken.kind == "problem" and "broken.png" in broken.caption and "\n" not in broken.caption
