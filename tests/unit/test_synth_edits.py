"""``mmtune data synth edits``: shapes editing triplets, their splits, the instruction-blanked control and the score.

Edits are checked here from first principles: the instruction is parsed, the object it names is found in the
input scene by the test's own rules, the expected edited scene is built by hand and compared with the row
and, rendered, with the pixels of the edited image.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.config.schema import DatasetSpec
from mmtune.data.edit_formats import read_triplets
from mmtune.data.sources import resolve_source
from mmtune.datagen.synth import (
    SYNTH_TASKS,
    generate_synth,
    score_edit,
    write_blank_copy,
    write_instruction_blank_copy,
)
from mmtune.datagen.synth.edits import BLANK_INSTRUCTION
from mmtune.datagen.synth.shapes import render
from mmtune.errors import ConfigError

STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
COLORS = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edits")
    generate_synth("edits", root / "set", train=40, heldout=16, questions_per_item=2, seed=0, progress=False,
                   blank=root / "set-blank")
    return root


def rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / split / "metadata.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def named(objects: list[dict], name: str) -> int:
    """The index of the one object a name ("circle", "red object", "red circle") fits."""
    words = name.split()
    fits = [i for i, o in enumerate(objects)
            if (words == [o["shape"]]) or (words == [o["color"], "object"]) or (words == [o["color"], o["shape"]])]
    assert len(fits) == 1, (name, objects)
    return fits[0]


def expected_edit(row: dict) -> dict:
    """The edited scene, from the instruction text and the input scene alone."""
    scene = copy.deepcopy(row["scene"])
    if m := re.fullmatch(r"(?:make|turn|paint) the (.+) (\w+)", row["instruction"]):
        obj = scene["objects"][named(scene["objects"], m[1])]
        assert m[2] != obj["color"]
        obj["color"] = m[2]
        return scene
    m = re.fullmatch(r"(?:move|shift) the (.+?) (?:one cell )?(left|right|up|down)", row["instruction"])
    assert m, row["instruction"]
    obj = scene["objects"][named(scene["objects"], m[1])]
    cell, (dr, dc) = scene["size"] / scene["grid"], STEPS[m[2]]
    assert 0 <= obj["row"] + dr < scene["grid"] and 0 <= obj["col"] + dc < scene["grid"]
    assert all((o["row"], o["col"]) != (obj["row"] + dr, obj["col"] + dc) for o in scene["objects"])
    obj["row"] += dr
    obj["col"] += dc
    obj["x"] = int((obj["col"] + 0.5) * cell) + obj["x"] - int((obj["col"] - dc + 0.5) * cell)
    obj["y"] = int((obj["row"] + 0.5) * cell) + obj["y"] - int((obj["row"] - dr + 0.5) * cell)
    return scene


def alternatives(scene: dict, *, nameable: bool = False) -> list[dict]:
    """Every edited scene one recolour or one move can make (the test's own enumeration); ``nameable``: only
    of objects an instruction can name (an object with an identical twin, same colour and shape, it cannot)."""
    out = []
    cell = scene["size"] / scene["grid"]
    taken = {(o["row"], o["col"]) for o in scene["objects"]}
    for i, o in enumerate(scene["objects"]):
        twins = [x for x in scene["objects"] if (x["color"], x["shape"]) == (o["color"], o["shape"])]
        if nameable and len(twins) > 1:
            continue
        for color in COLORS:
            if color != o["color"]:
                s = copy.deepcopy(scene)
                s["objects"][i]["color"] = color
                out.append(s)
        for dr, dc in STEPS.values():
            r, c = o["row"] + dr, o["col"] + dc
            if 0 <= r < scene["grid"] and 0 <= c < scene["grid"] and (r, c) not in taken:
                s = copy.deepcopy(scene)
                s["objects"][i]["x"] += int((c + 0.5) * cell) - int((o["col"] + 0.5) * cell)
                s["objects"][i]["y"] += int((r + 0.5) * cell) - int((o["row"] + 0.5) * cell)
                out.append(s)
    return out


def test_every_edit_is_exactly_what_its_instruction_says(made):
    folder = made / "set"
    for split in ("train", "heldout"):
        for row in rows(folder, split):
            assert row["edit_prompt"] == row["instruction"]
            want = expected_edit(row)
            got = row["edited_scene"]
            assert drawn(got) == drawn(want), row["id"]
            assert np.array_equal(pixels(folder / split / row["input_image"]), np.asarray(render(row["scene"])))
            edited = pixels(folder / split / row["edited_image"])
            assert np.array_equal(edited, np.asarray(render(want)))
            assert not np.array_equal(edited, pixels(folder / split / row["input_image"]))
            assert row["after"]["color"] == want["objects"][row["target"]]["color"]


def test_the_score_accepts_the_asked_edit_only(made):
    folder = made / "set"
    for row in rows(folder, "heldout"):
        edited = Image.open(folder / "heldout" / row["edited_image"])
        score = score_edit(row, edited)
        assert score == {"named_color": row["after"]["color"], "color_correct": True, "correct": True}
        assert score_edit(row, edited.resize((64, 64), Image.Resampling.NEAREST))["correct"]
        assert not score_edit(row, Image.open(folder / "heldout" / row["input_image"]))["correct"]
        alts = alternatives(row["scene"])
        assert sum(drawn(s) == drawn(row["edited_scene"]) for s in alts) == 1  # the asked edit is one of them
        assert not any(score_edit(row, render(s))["correct"] for s in alts if drawn(s) != drawn(row["edited_scene"]))


def drawn(scene: dict) -> list[tuple]:
    return [(o["shape"], o["color"], o["x"], o["y"], o["radius"]) for o in scene["objects"]]


def test_splits_are_disjoint_seeded_and_the_held_out_split_does_not_depend_on_the_train_size(made, tmp_path):
    folder = made / "set"
    inputs = {split: {pixels(folder / split / r["input_image"]).tobytes() for r in rows(folder, split)}
              for split in ("train", "heldout")}
    assert len(inputs["train"]) == 40 and len(inputs["heldout"]) == 16
    assert not inputs["train"] & inputs["heldout"]
    for split in ("train", "heldout"):
        per_input: dict[str, set] = {}
        for r in rows(folder, split):
            per_input.setdefault(r["input_image"], set()).add(r["edit_prompt"])
        assert all(len(v) == 2 for v in per_input.values())  # two different edits of each input
    generate_synth("edits", tmp_path / "small", train=7, heldout=16, questions_per_item=2, seed=0, progress=False)
    generate_synth("edits", tmp_path / "again", train=40, heldout=16, questions_per_item=2, seed=0, progress=False)
    for name in sorted(p.relative_to(folder / "heldout") for p in (folder / "heldout").iterdir()):
        assert (tmp_path / "small" / "heldout" / name).read_bytes() == (folder / "heldout" / name).read_bytes()
    for name in sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name != "README.md"
                       and p.name != "synth.json"):
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name


def test_the_summary_records_the_instruction_blind_ceiling_recomputed_here(made):
    summary = json.loads((made / "set" / "synth.json").read_text())
    held = rows(made / "set", "heldout")
    ceilings = []
    for row in held:
        scene, n = row["scene"], {"color": 0, "move": 0}
        for s in alternatives(scene, nameable=True):
            changed = [i for i, (a, b) in enumerate(zip(scene["objects"], s["objects"])) if a != b]
            kind = "color" if s["objects"][changed[0]]["color"] != scene["objects"][changed[0]]["color"] else "move"
            n[kind] += 1
        assert row["candidates"] == n
        ceilings.append(max(0.5 / n["color"], 0.5 / n["move"]))
    assert summary["chance"]["overall"] == round(sum(ceilings) / len(ceilings), 4)
    assert 0 < summary["chance"]["overall"] < 0.5
    assert summary["layout"] == "edit_triplets" and summary["blank_instruction"] == BLANK_INSTRUCTION
    assert summary["splits"]["heldout"]["rows"] == 32 and summary["splits"]["train"]["items"] == 40
    assert summary["question_only"]["overall"] == 0.0  # no held-out edited image ever appears in train


def test_the_control_keeps_every_image_and_blanks_every_instruction(made):
    folder, blank = made / "set", made / "set-blank"
    for split in ("train", "heldout"):
        real, control = rows(folder, split), rows(blank, split)
        assert [{**r, "edit_prompt": None} for r in real] == [{**r, "edit_prompt": None} for r in control]
        assert {r["edit_prompt"] for r in control} == {BLANK_INSTRUCTION}
        assert [r["instruction"] for r in control] == [r["edit_prompt"] for r in real]
        for path in (folder / split).glob("*.png"):
            assert (blank / split / path.name).read_bytes() == path.read_bytes()
        assert (blank / f"{split}.yaml").read_text() == (folder / f"{split}.yaml").read_text()
    summary = json.loads((blank / "synth.json").read_text())
    assert summary["blank"] is True and summary["blank_of"] == "../set"
    assert json.loads((folder / "synth.json").read_text())["blank_copy"] == "../set-blank"
    for root in (folder, blank):  # both read as edit_triplets cards, nothing skipped
        got = read_triplets(resolve_source(DatasetSpec(card=str(root / "heldout.yaml"))), on_bad_sample="error")
        assert len(got.triplets) == 32 and not got.skipped and not got.resized


def test_controls_and_options_that_do_not_fit_are_one_line(made, tmp_path):
    with pytest.raises(ConfigError, match="an edit_triplets set: its control blanks the instruction"):
        write_blank_copy(made / "set", tmp_path / "x")
    generate_synth("shapes", tmp_path / "shapes", train=2, heldout=2, progress=False)
    with pytest.raises(ConfigError, match="not an edit set"):
        write_instruction_blank_copy(tmp_path / "shapes", tmp_path / "y")
    with pytest.raises(ConfigError, match="--objects 4: leave a 2x2 grid at least one empty cell"):
        generate_synth("edits", tmp_path / "z", train=2, heldout=2, objects=4, progress=False)
    source = SYNTH_TASKS["edits"]()
    assert source.layout == "edit_triplets" and set(source.answer_sets) == set(source.question_types)
