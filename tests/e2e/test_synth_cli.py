"""``mmtune data synth`` run in a subprocess as a user would: the files, the printed summary, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def run(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("mmtune", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "mmtune.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def test_synth_writes_both_splits_cards_summary_readme_and_the_blank_control(tmp_path):
    out, blank = tmp_path / "shapes", tmp_path / "shapes-blank"
    proc = run("data", "synth", "shapes-pick", "--out", str(out), "--train", "16", "--heldout", "8", "--seed", "3",
               "--image-size", "48", "--questions-per-item", "2", "--blank", str(blank))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"shapes-pick: 16 train / 8 held-out images (32 / 16 questions) in {out}" in proc.stdout
    assert "held-out chance (majority answer): color" in proc.stdout and str(blank) in proc.stdout
    for folder in (out, blank):
        assert {p.name for p in folder.iterdir()} == {"train.json", "heldout.json", "train.yaml", "heldout.yaml",
                                                      "synth.json", "README.md", "images"}
        assert len(list((folder / "images" / "train").glob("*.png"))) == 16
        assert len(list((folder / "images" / "heldout").glob("*.png"))) == 8
    summary = json.loads((out / "synth.json").read_text())
    assert (summary["task"], summary["seed"], summary["parameters"]["image_size"]) == ("shapes-pick", 3, 48)
    assert summary["splits"]["heldout"]["rows"] == 16 and set(summary["chance"]) == {"color", "shape", "overall"}
    row = json.loads((out / "train.json").read_text())[0]
    assert row["conversations"][0]["value"].startswith("<image>\n") and row["question_type"] in ("color", "shape")
    with Image.open(blank / "images" / row["image"]) as im:
        assert (np.asarray(im) == 128).all() and im.size == (48, 48)
    assert (blank / "train.json").read_bytes() == (out / "train.json").read_bytes()

    # The README's command regenerates the same files.
    command = next(line for line in (out / "README.md").read_text().splitlines() if line.startswith("mmtune data"))
    args = command.split()[1:]
    args[args.index("--out") + 1] = str(tmp_path / "again")
    assert run(*args).returncode == 0
    assert (tmp_path / "again" / "train.json").read_bytes() == (out / "train.json").read_bytes()


def test_synth_bad_arguments_are_one_line(tmp_path):
    for args, message in [(["shapes", "--train", "0"], "--train must be a whole number of at least 1, got 0"),
                          (["spheres"], "unknown task 'spheres' (valid: shapes, shapes-pick, motion, event-order, "
                                        "av-sync, pitch, loudness, edits)")]:
        proc = run("data", "synth", *args, "--out", str(tmp_path / "x"))
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [f"mmtune: error: synth{' shapes' if args[0] == 'shapes' else ''}: "
                                                     f"{message}"]
    assert not (tmp_path / "x").exists()
    helped = run("data", "synth", "--help")
    assert helped.returncode == 0
    assert "train images (default 2000)" in " ".join(helped.stdout.split())
