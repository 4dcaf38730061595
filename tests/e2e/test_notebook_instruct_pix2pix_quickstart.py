"""Execute notebooks/instruct_pix2pix_quickstart.ipynb with nbclient, so the demo cannot rot.

Besides "no cell raised", the test checks what the notebook claims to show: shipped triplets and one training
batch whose input and edited images got the same resize, crop and flip; the UNet's ``conv_in`` widened 4 -> 8 with
zero new channels (and the original output kept); one training step's conditioning dropout per case; the tiny
recipe trained its steps with a falling held-out loss; an edit, and the input image moving the noise prediction
away from the unconditional one after training (not before); synthetic edits with their blanked control, chance
level and scores; and the diffusers export editing as ``edit_image`` does with the same seed.

The kernel gets its own ``MMTUNE_CACHE``, so the ``tiny-stable-diffusion`` alias is built by the current code
(a cache written by an earlier version of the builder is never rebuilt).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from notebook_helpers import executed_notebook, shown_report

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "instruct_pix2pix_quickstart.ipynb"
STEPS, EVAL_EVERY = 50, 10


def number_after(text: str, marker: str) -> float:
    return float(text.split(marker, 1)[1].split()[0])


def test_instruct_pix2pix_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    executed, text = executed_notebook(NOTEBOOK, monkeypatch, tmp_path)
    images = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert len(images) >= 4 and all("image/png" in o["data"] for o in images)  # triplets, batch, edit, synth

    # 1. the shipped triplets, and one batch: each image's resize, crop and flip found on its own, the same for both
    assert "20 triplets; four of them" in text
    assert "original (8, 3, 32, 32) | edited (8, 3, 32, 32) | input_ids (8, 77)" in text
    found = r"\(\d+, \d+, \d+, \w+\)"  # (side, top, left, flipped)
    pairs = re.findall(rf"input ({found}) \| edited ({found}) \| same crop and flip: (\w+)", text)
    assert len(pairs) == 8 and all(found_in == found_out and same == "True" for found_in, found_out, same in pairs)
    sides = {int(found_in[1:].split(",")[0]) for found_in, _, _ in pairs}
    flips = {found_in.rstrip(")").split(", ")[-1] for found_in, _, _ in pairs}
    assert sides <= set(range(32, 37)) and len(sides) > 1 and flips == {"True", "False"}  # the draws vary

    # 2. conv_in widened 4 -> 8, the new channels zero, the original output kept; conditioning dropout per case
    assert "conv_in weight: (32, 8, 3, 3) (out, in, kh, kw) | widened here: True | unet.config.in_channels: 8" in text
    assert "new input channels 4-7 all zero: True | original channels 0-3 nonzero: True" in text
    assert number_after(text, "vs the original UNet: max |difference|") < 1e-5
    assert "UNet input (4, 8, 16, 16)" in text
    for case, dropped in (("text only dropped ", ("True ", "False")), ("both dropped      ", ("True ", "True")),
                          ("image only dropped", ("False", "True")), ("both kept         ", ("False", "False"))):
        assert (f"({case}): instruction -> empty prompt: {dropped[0]} | input-image latents -> zero: {dropped[1]}"
                in text), case
    shares = re.search(r"text only ([\d.]+), both ([\d.]+), image only ([\d.]+)", text)
    assert all(abs(float(s) - 0.05) < 0.005 for s in shares.groups())

    # 3. the tiny recipe trained its steps; the held-out loss falls
    run = tmp_path / "runs" / "instruct-pix2pix-quickstart" / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == STEPS // EVAL_EVERY and all(math.isfinite(x) for x in losses + evals)
    assert "Model (final/)" in shown_report(executed, run)  # the edit the trained pipeline makes
    assert evals[-1] < 0.7 * evals[0], evals
    assert all("samples_per_s" in r for r in records if "loss" in r)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["widened_conv_in"] is True
    assert re.search(r"unet +full +986,596 +986,596", text) and re.search(r"vae +frozen +0 ", text)
    assert json.loads((run / "final" / "mmtune.json").read_text())["ema"] is True

    # 4. an edit; after training the input image moves the prediction away from the unconditional one
    assert "'remove all the colour': 10 steps, text guidance 7.5, image guidance 1.5, seed 0 -> 32x32 RGB" in text
    effects = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"(image\+instruction vs unconditional|image vs unconditional|instruction on top of image)"
                             r" +([\d.]+) +([\d.]+)", line.strip()):
            effects[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    assert len(effects) == 3, effects
    assert effects["image vs unconditional"][0] == 0.0  # zero conv_in channels: the image does nothing yet
    assert effects["image vs unconditional"][1] > 0.01
    assert effects["image+instruction vs unconditional"][1] > 0.01

    # 5. synthetic edits with the blanked-instruction control, chance, and scores
    work = run.parent
    synth = json.loads((work / "edits" / "synth.json").read_text())
    assert 0 < synth["chance"]["overall"] < 1 and synth["blank_copy"]
    assert f"held-out chance (instruction-blind ceiling): {synth['chance']}" in text
    blank = json.loads((work / "edits-blank" / "synth.json").read_text())
    assert blank["blank"] is True
    blank_rows = (work / "edits-blank" / "heldout" / "metadata.jsonl").read_text().splitlines()
    blank_rows = [json.loads(line) for line in blank_rows]
    assert {r["edit_prompt"] for r in blank_rows} == {synth["blank_instruction"]}
    assert f"the control's row 0: '{synth['blank_instruction']}'" in text
    right = text.split("score of the right edited image:")[1].splitlines()[0]
    unedited = text.split("score of the unedited input image:")[1].splitlines()[0]
    assert "'color_correct': True, 'correct': True}" in right
    assert "'color_correct': False, 'correct': False}" in unedited

    # 6. the diffusers export reloads and edits as edit_image does, with the same seed
    exported = work / "exported"
    assert (exported / "model_index.json").is_file() and not (exported / "mmtune.json").exists()
    assert "StableDiffusionInstructPix2PixPipeline | unet in_channels 8" in text
    assert number_after(text, "same seed, max |difference| from edit_image:") < 1e-3
