"""``mmtune report`` on runs that really trained: a text run (written by ``train.report: true``, then again by
the CLI), an image run and an edit run. The pages are checked for what a reader needs: the curves as embedded
PNGs, the trainable table and data counts the run recorded, and the samples with the answers final/ really gives.
The text run's page is also opened in headless chromium: no console error, a drawn screenshot, and curves whose
matplotlib lines hold exactly what ``metrics.jsonl`` holds.
With ``MMTUNE_TEST_ARTIFACTS=DIR`` the image run's page is kept as ``DIR/report-image-run.html``."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from browser_helpers import chromium, console_errors, distinct_colours, needs_chromium
from conftest import sharegpt_rows, write_jsonl
from media_helpers import llava_rows, open_clip_image_branch, write_json

import mmtune
from mmtune.cli import main
from mmtune.data.media import attach_media
from mmtune.generation.decoding import generate_texts
from mmtune.generation.options import GenerationOptions
from mmtune.models.run_outputs import load_for_inference
from mmtune.reporting import ReportOptions, write_report
from mmtune.reporting.plots import run_charts
from mmtune.reporting.run_files import read_run

CONVS = [[{"role": "user", "content": f"What is {i} plus {i}?"},
          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}] for i in range(12)]


def chart_pngs(page: str) -> dict[str, bytes]:
    """Chart title -> the PNG embedded under it."""
    found = re.findall(r'<h3>([^<]+)</h3><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', page)
    return {title: base64.b64decode(data) for title, data in found}


def shown_samples(page: str) -> list[tuple[str, str]]:
    """(answer, reference) of every conversation sample on the page, unescaped."""
    answers = re.findall(r'<pre class="answer">(.*?)</pre>', page, re.DOTALL)
    references = re.findall(r'<pre class="reference">(.*?)</pre>', page, re.DOTALL)
    return [(html.unescape(a), html.unescape(r)) for a, r in zip(answers, references)]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, varied_llama_dirs, one_torch_thread) -> Path:
    """A text run trained 3 steps by ``mmtune train ... train.report=true`` (its page written at the end)."""
    root = tmp_path_factory.mktemp("text-run")
    data = write_jsonl(root / "d.jsonl", [*sharegpt_rows(CONVS), "{not json"])
    recipe = {
        "output_dir": str(root / "run"), "model": {"name": str(varied_llama_dirs[0])},
        "data": {"datasets": [{"path": str(data), "format": "sharegpt"}], "max_length": 256,
                 "cache_dir": str(root / "cache"), "packing": True, "val_fraction": 0.25, "on_bad_sample": "skip"},
        "method": {"name": "lora"},
        "train": {"max_steps": 3, "eval_every": 2, "micro_batch_size": 2, "lr": 1e-3, "progress": False,
                  "tensorboard": False}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(root / "recipe.yaml"), "train.report=true"]) == 0
    return Path(recipe["output_dir"])


def test_train_report_true_writes_the_page_and_the_cli_writes_it_again(text_run, tmp_path, capsys):
    run = text_run
    page = (run / "report.html").read_text()

    charts = chart_pngs(page)
    assert {"Loss", "Learning rate", "Throughput", "Data wait", "Gradient norm"} <= set(charts)
    assert all(png.startswith(b"\x89PNG") for png in charts.values())
    summary = json.loads((run / "summary.json").read_text())
    # The trainable table: the LoRA parameters final/ holds, as the run counted them.
    from safetensors.torch import load_file

    lora_params = sum(t.numel() for t in load_file(run / "final" / "adapter_model.safetensors").values())
    llm = next(r for r in summary["trainable"] if r["component"] == "llm")
    assert llm["trainable"] == lora_params and llm["method"] == "lora"
    assert f"<td>llm</td><td>lora</td><td class=num>{lora_params:,}</td>" in page
    # The data report: 13 rows read, 12 samples, the malformed row skipped and where it was.
    assert "<td class=num>13</td><td class=num>12</td>" in page
    assert "1 malformed JSON" in page and "d.jsonl:13" in page
    assert f"{100 * summary['packing_utilisation']:.1f} %" in page
    # The samples: 3 validation conversations, answered exactly as final/ answers them.
    samples = shown_samples(page)
    assert len(samples) == 3
    model, tok = load_for_inference(str(run))
    asked = [[{"role": "user", "content": f"What is {ref.split()[0]} plus {ref.split()[0]}?"}] for _, ref in samples]
    expected = generate_texts(model, tok, asked, GenerationOptions(max_new_tokens=ReportOptions.max_new_tokens),
                              progress=False)
    assert [a for a, _ in samples] == expected and all(expected)
    assert all(ref == f"{ref.split()[0]} plus {ref.split()[0]} is {2 * int(ref.split()[0])}." for _, ref in samples)

    out = tmp_path / "elsewhere" / "one.html"
    assert main(["report", str(run), "--out", str(out), "--samples", "1", "--max-new-tokens", "4"]) == 0
    assert str(out) in capsys.readouterr().out
    first = generate_texts(model, tok, asked[:1], GenerationOptions(max_new_tokens=4), progress=False)
    assert shown_samples(out.read_text()) == [(first[0], samples[0][1])]  # one sample: the split's first


def metric_records(run: Path, key: str) -> tuple[list[int], list[float]]:
    """``key`` over steps, read straight from ``metrics.jsonl`` (a step logged twice keeps its last value)."""
    by_step = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if key in record:
            by_step[record["step"]] = record[key]
    return sorted(by_step), [by_step[step] for step in sorted(by_step)]


@needs_chromium
def test_the_page_opens_in_a_browser_and_plots_metrics_jsonl(text_run, tmp_path):
    from selenium.webdriver.common.by import By

    page_file = text_run / "report.html"
    page = page_file.read_text()
    charts = {chart.title: chart for chart in run_charts(read_run(text_run))}
    # The figures checked below are the ones on the page: each embedded PNG is its figure's drawing.
    assert {title: chart.image for title, chart in charts.items()} == dict(re.findall(
        r'<h3>([^<]+)</h3><img alt="[^"]*" src="(data:image/png;base64,[^"]+)"', page))
    plotted = {line.get_label(): line for chart in charts.values() for line in chart.figure.axes[0].get_lines()}
    for label, key in [("train loss", "loss"), ("eval loss", "eval_loss"), ("learning rate", "lr"),
                       ("tokens_per_s", "tokens_per_s"), ("gradient norm", "grad_norm")]:
        steps, values = metric_records(text_run, key)
        assert steps, f"no {key} in metrics.jsonl"
        assert list(plotted[label].get_xdata()) == steps and list(plotted[label].get_ydata()) == values, label

    with chromium(tmp_path / "chromium-profile") as browser:
        browser.get(page_file.as_uri())
        assert browser.execute_script("return document.readyState") == "complete"
        assert console_errors(browser) == []
        images = browser.find_elements(By.CSS_SELECTOR, ".chart img")
        assert len(images) == len(charts) and all(
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
            for image in images)  # every chart decoded and drawn
        screenshot = tmp_path / "report-page.png"
        browser.save_screenshot(str(screenshot))
    print(f"screenshot of the report: {screenshot}")
    assert distinct_colours(screenshot) > 50  # text, tables and curves, not a blank page


def test_an_image_run_shows_thumbnails_beside_the_answers(tmp_path, tiny_recipe, varied_llama_dirs, photos,
                                                         one_torch_thread):
    from PIL import Image

    recipe = tiny_recipe(write_json(tmp_path / "d.json", llava_rows(8)), fmt="llava",
                         model={"name": str(varied_llama_dirs[0]),
                                "media": {"image": open_clip_image_branch().model_dump(mode="json")}},
                         data={"val_fraction": 0.25}, train={"max_steps": 2})
    recipe["data"]["datasets"][0]["media_folder"] = str(photos)
    run = mmtune.train(recipe).run_dir
    page = write_report(run, options=ReportOptions(samples=2, max_new_tokens=6)).read_text()
    if os.environ.get("MMTUNE_TEST_ARTIFACTS"):  # keep the page to look at (e.g. a headless-browser screenshot)
        Path(os.environ["MMTUNE_TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["MMTUNE_TEST_ARTIFACTS"]) / "report-image-run.html").write_text(page)

    assert "Loss" in chart_pngs(page)
    kept = json.loads((run / "summary.json").read_text())["data"][0]["media"]["image"]
    assert f"{kept} image" in page
    samples = shown_samples(page)
    thumbs = re.findall(r'<figure><img alt="(p\d\.png)" src="data:image/png;base64,([^"]+)">', page)
    assert len(samples) == 2 and len(thumbs) == sum(ref.startswith("Picture") for _, ref in samples) > 0
    for name, data in thumbs:
        with Image.open(io.BytesIO(base64.b64decode(data))) as shown, Image.open(photos / name) as source:
            assert shown.size == source.size  # smaller than a thumbnail: shown whole
            assert shown.convert("RGB").tobytes() == source.convert("RGB").tobytes()
    model, tok = load_for_inference(str(run))
    for answer, reference in samples:
        i = int(reference.split()[1]) if reference.startswith("Picture") else int(reference.rstrip("."))
        asked = [{"role": "user", "content": f"What is in picture {i}?" if i % 4 != 3 else f"Say {i}."}]
        if i % 4 != 3:
            asked = attach_media(asked, [("image", str(photos / f"p{i % 4}.png"))])
        assert [answer] == generate_texts(model, tok, [asked], GenerationOptions(max_new_tokens=6), progress=False)
        assert answer


def test_an_edit_run_shows_input_reference_and_the_models_edit(tmp_path, tiny_sd_dir, one_torch_thread):
    import numpy as np
    from PIL import Image

    from mmtune.generation.edit import EditOptions, edit_image, open_editor

    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        pixels = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(tmp_path / f"{i}_flipped.png")
        rows.append({"input_image": f"{i}.png", "edit_prompt": "flip it <left>", "edited_image": f"{i}_flipped.png"})
    write_jsonl(tmp_path / "metadata.jsonl", rows)
    run = mmtune.train({
        "task": "edit", "output_dir": str(tmp_path / "run"), "model": {"name": str(tiny_sd_dir)},
        "data": {"datasets": [{"path": str(tmp_path / "metadata.jsonl"), "format": "edit_triplets"}],
                 "resolution": 32, "resize_range": [32, 40], "val_fraction": 0.25},
        "method": {"name": "lora"},
        "train": {"max_steps": 1, "micro_batch_size": 3, "progress": False, "tensorboard": False}}).run_dir
    page = write_report(run, options=ReportOptions(samples=4, edit_steps=2)).read_text()

    assert "flip it &lt;left&gt;" in page and "<left>" not in page
    assert re.search(r"<td>unet</td><td>lora</td><td class=num>[1-9]", page)  # the trainable table
    shown = re.findall(r'<div><h4>([^<]+)</h4><img alt="[^"]*" src="data:image/png;base64,([^"]+)"></div>', page)
    assert [title for title, _ in shown] == ["Input", "Reference edit", "Model (final/)"]  # one validation triplet
    images = {title: Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB") for title, data in shown}
    inputs = {i: np.asarray(Image.open(tmp_path / f"{i}.png")) for i in range(4)}
    source = next(i for i, pixels in inputs.items() if np.array_equal(np.asarray(images["Input"]), pixels))
    flipped = np.asarray(Image.open(tmp_path / f"{source}_flipped.png"))
    assert np.array_equal(np.asarray(images["Reference edit"]), flipped)
    expected = edit_image(open_editor(run), tmp_path / f"{source}.png", "flip it <left>",
                          EditOptions(steps=2, resolution=32, progress=False))
    assert np.array_equal(np.asarray(images["Model (final/)"]), np.asarray(expected))
