"""``mmtune data synth``: seeded synthetic visual questions, their splits, cards, chance levels and blank control.

Answers are recomputed here from each row's ``scene`` by parsing the question text (positions from the pixel
coordinates, not from the stored cell name), and scenes are checked against the pixels of their images.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.config.loader import load_card
from mmtune.config.schema import DataConfig, DatasetSpec
from mmtune.data.media import with_resolved_media
from mmtune.data.pipeline import SourceReport, build_conversation_data, conversations_of
from mmtune.data.sources import resolve_source
from mmtune.datagen.synth import SYNTH_TASKS, generate_synth, write_blank_copy
from mmtune.datagen.synth.shapes import COLORS
from mmtune.errors import ConfigError
from mmtune.modalities.image import IMAGE, IMAGE_PLACEHOLDER_ID

CELLS = {2: [["top-left", "top-right"], ["bottom-left", "bottom-right"]],
         3: [["top-left", "top", "top-right"], ["left", "center", "right"], ["bottom-left", "bottom", "bottom-right"]]}
PLURALS = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross", "diamonds": "diamond"}


def make(tmp_path: Path, name: str = "shapes", task: str = "shapes", **kw) -> Path:
    kw = {"train": 40, "heldout": 24, "seed": 0, "progress": False, **kw}
    generate_synth(task, tmp_path / name, **kw)
    return tmp_path / name


def rows(folder: Path, split: str) -> list[dict]:
    return json.loads((folder / f"{split}.json").read_text())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def expected_answer(question: str, scene: dict) -> str:
    """The answer, recomputed from the scene (the referred object must be unique)."""
    objects = scene["objects"]

    def one(matches: list[dict]) -> dict:
        assert len(matches) == 1, (question, scene)
        return matches[0]

    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        return one([o for o in objects if o["shape"] == m[1]])["color"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return one([o for o in objects if o["color"] == m[1]])["shape"]
    if question == "How many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        assert m[1] in COLORS
        return str(sum(o["color"] == m[1] for o in objects))
    if m := re.fullmatch(r"How many (\w+) are there\?", question):
        return str(sum(o["shape"] == PLURALS[m[1]] for o in objects))
    if m := re.fullmatch(r"Where is the (\w+)(?: (\w+))?\?", question):
        first, second = m[1], m[2]
        if second is None:
            target = one([o for o in objects if o["shape"] == first])
        elif second == "object":
            target = one([o for o in objects if o["color"] == first])
        else:
            target = one([o for o in objects if (o["color"], o["shape"]) == (first, second)])
        cell = scene["size"] / scene["grid"]
        return CELLS[scene["grid"]][int(target["y"] // cell)][int(target["x"] // cell)]
    raise AssertionError(f"unexpected question {question!r}")


# --------------------------------------------------------------------------- determinism and splits


def test_same_seed_writes_identical_files_and_another_seed_differs(tmp_path):
    a = make(tmp_path, "a", seed=7)
    b = make(tmp_path, "b", seed=7)
    c = make(tmp_path, "c", seed=8)
    assert files(a) == files(b)  # every file, README and synth.json included: nothing depends on the folder
    assert len(files(a)) == 2 + 2 + 2 + 40 + 24
    fc = files(c)
    assert fc.keys() == files(a).keys()
    assert fc["train.json"] != files(a)["train.json"]
    assert sum(fc[k] != files(a)[k] for k in fc if k.startswith("images/")) > 50


def test_heldout_images_never_appear_in_train_even_when_scenes_collide(tmp_path):
    # A tiny scene space (about 540 distinct images): many draws repeat, and the splits must still be disjoint.
    out = make(tmp_path, train=250, heldout=150, image_size=24, grid=2, objects=1, colors="red,green",
               shapes="circle,square")
    digests = {split: [pixels(p).tobytes() for p in sorted((out / "images" / split).glob("*.png"))]
               for split in ("train", "heldout")}
    assert len(digests["train"]) == 250 and len(digests["heldout"]) == 150
    assert len(set(digests["train"])) == 250 and len(set(digests["heldout"])) == 150
    assert not set(digests["train"]) & set(digests["heldout"])
    keys = {s: {json.dumps(r["scene"], sort_keys=True) for r in rows(out, s)} for s in ("train", "heldout")}
    assert not keys["train"] & keys["heldout"]


def test_heldout_split_does_not_depend_on_the_train_size(tmp_path):
    small = make(tmp_path, "small", train=10)
    large = make(tmp_path, "large", train=30)
    assert (small / "heldout.json").read_bytes() == (large / "heldout.json").read_bytes()
    assert files(small / "images" / "heldout") == files(large / "images" / "heldout")
    assert rows(large, "train")[:10] == rows(small, "train")


def test_asking_for_more_distinct_images_than_exist_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="distinct"):
        make(tmp_path, train=10, heldout=600, image_size=24, grid=2, objects=1, colors="red,green",
             shapes="circle,square")


# --------------------------------------------------------------------------- rows, answers and pixels


@pytest.mark.parametrize("task, per_item", [("shapes", 1), ("shapes", 3), ("shapes-pick", 2)])
def test_every_answer_is_right_for_its_scene_and_the_scene_is_the_image(tmp_path, task, per_item):
    out = make(tmp_path, task=task, questions_per_item=per_item, train=60, heldout=30)
    seen_types = Counter()
    for split in ("train", "heldout"):
        split_rows = rows(out, split)
        assert len(split_rows) == per_item * {"train": 60, "heldout": 30}[split]
        assert len({r["id"] for r in split_rows}) == len(split_rows)
        by_image: dict[str, list[dict]] = {}
        for r in split_rows:
            human, gpt = r["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt"
            assert human["value"] == "<image>\n" + r["question"]
            assert gpt["value"] == r["answer"] == expected_answer(r["question"], r["scene"])
            assert len(r["answer"].split()) == 1
            if r["target"] is not None:  # the object the question is about
                obj = r["scene"]["objects"][r["target"]]
                assert r["answer"] in (obj["color"], obj["shape"], obj["position"])
            seen_types[r["question_type"]] += 1
            by_image.setdefault(r["image"], []).append(r)
        for image, its_rows in by_image.items():
            assert len(its_rows) == per_item
            assert len({r["question"] for r in its_rows}) == per_item  # distinct questions per image
            scene = its_rows[0]["scene"]
            px = pixels(out / "images" / image)
            assert px.shape == (64, 64, 3)
            assert tuple(px[0, 0]) == tuple(px[-1, -1]) == tuple(scene["background"])
            for o in scene["objects"]:
                assert tuple(px[o["y"], o["x"]]) == COLORS[o["color"]], (image, o)
            present = {name for name, rgb in COLORS.items() if (px == rgb).all(axis=-1).any()}
            assert present == {o["color"] for o in scene["objects"]}
    expected_types = {"shapes": {"color", "shape", "count", "position"}, "shapes-pick": {"color", "shape"}}[task]
    assert set(seen_types) == expected_types


def test_question_types_take_turns(tmp_path):
    out = make(tmp_path, train=41, heldout=20)
    for split in ("train", "heldout"):
        counts = Counter(r["question_type"] for r in rows(out, split))
        assert set(counts) == {"color", "shape", "count", "position"}
        assert max(counts.values()) - min(counts.values()) <= 1
    only = make(tmp_path, "only", question_types="count,position")
    assert {r["question_type"] for r in rows(only, "train")} == {"count", "position"}
    assert set(json.loads((only / "synth.json").read_text())["answer_sets"]) == {"count", "position"}


def test_pick_answers_depend_on_the_question_not_on_the_image_alone(tmp_path):
    out = make(tmp_path, task="shapes-pick", questions_per_item=4, question_types="color", train=30, heldout=60)
    for split in ("train", "heldout"):
        by_image: dict[str, list[dict]] = {}
        for r in rows(out, split):
            objects = r["scene"]["objects"]
            assert sorted(o["color"] for o in objects) == sorted(["red", "green", "blue", "yellow"])
            assert sorted(o["shape"] for o in objects) == sorted(["circle", "square", "triangle", "cross"])
            by_image.setdefault(r["image"], []).append(r["answer"])
        # the same image, four questions, four different answers: the image alone cannot give the answer
        assert all(sorted(a) == sorted(["red", "green", "blue", "yellow"]) for a in by_image.values())
    summary = json.loads((out / "synth.json").read_text())
    # nor can the question alone: "What color is the circle?" is answered by every colour alike
    assert summary["question_only"]["overall"] < 0.4
    assert summary["chance"]["color"] == pytest.approx(0.25, abs=0.01)  # every image holds every colour once


# --------------------------------------------------------------------------- summary, cards, mmtune's readers


def test_summary_chance_levels_match_the_heldout_rows(tmp_path):
    out = make(tmp_path, train=80, heldout=60)
    summary = json.loads((out / "synth.json").read_text())
    held = rows(out, "heldout")
    total_top = 0
    for t in ("color", "shape", "count", "position"):
        answers = Counter(r["answer"] for r in held if r["question_type"] == t)
        top = max(answers.values())
        total_top += top
        assert summary["chance"][t] == pytest.approx(top / sum(answers.values()), abs=1e-4)
        assert summary["splits"]["heldout"]["question_types"][t]["answers"] == {
            a: answers[a] for a in summary["answer_sets"][t] if answers[a]}
        assert set(answers) <= set(summary["answer_sets"][t])
    assert summary["chance"]["overall"] == pytest.approx(total_top / len(held), abs=1e-4)
    assert summary["splits"]["train"]["rows"] == summary["splits"]["train"]["items"] == 80
    assert summary["answer_sets"]["color"] == ["red", "green", "blue", "yellow"]
    assert 0.0 <= summary["question_only"]["overall"] <= 1.0
    readme = (out / "README.md").read_text()
    assert f"| color | 15 | {summary['splits']['heldout']['question_types']['color']['majority_answer']} | " \
           f"{summary['chance']['color']:.3f} |" in readme
    assert "--image-size 64 --grid 3 --objects 1-3" in readme and "seed: 0" in readme


def test_cards_load_and_the_llava_reader_converts_every_row(tmp_path):
    out = make(tmp_path)
    for split in ("train", "heldout"):
        card = load_card(out / f"{split}.yaml")
        assert (card.format, card.path, card.media_folder) == ("llava", f"{split}.json", "images")
        src = resolve_source(DatasetSpec(card=str(out / f"{split}.yaml")))
        report = SourceReport(src.name)
        convs = list(conversations_of(src, report, "error"))
        split_rows = rows(out, split)
        assert len(convs) == len(split_rows) == report.rows
        for (_, conv), row in zip(convs, split_rows):
            user, assistant = with_resolved_media(conv, src.media_root())
            assert user["content"] == "<image>\n" + row["question"]
            assert assistant == {"role": "assistant", "content": row["answer"]}
            (item,) = user["media"]
            assert Path(item["ref"]) == (out / "images" / row["image"]).resolve()
        IMAGE.check(Path(item["ref"]))
        assert IMAGE.load(Path(item["ref"]), {}).size == (64, 64)


def test_the_pipeline_tokenizes_every_row_with_its_image(tmp_path, tokenizer):
    from media_helpers import TOKENS, image_specs

    out = make(tmp_path, train=12, heldout=4)
    cfg = DataConfig(datasets=[{"card": str(out / "train.yaml")}], cache_dir=str(tmp_path / "cache"), max_length=128,
                     packing=False)
    data = build_conversation_data(tokenizer, cfg, seed=0, media=image_specs())
    assert (data.reports[0].samples, data.reports[0].media) == (12, {"image": 12})
    answers = sorted(r["answer"] for r in rows(out, "train"))
    decoded = []
    for k in range(len(data.train)):
        ids, trained = data.train[k]
        assert (ids == IMAGE_PLACEHOLDER_ID).sum() == TOKENS
        decoded.append(tokenizer.decode(ids[trained].tolist()).split("<|im_end|>")[0].strip())
    assert sorted(decoded) == answers  # only the one-word answer is trained


# --------------------------------------------------------------------------- the blank control


def test_blank_copy_has_the_same_rows_and_uniform_grey_images_of_the_same_size(tmp_path):
    out = make(tmp_path, image_size=48, blank=tmp_path / "shapes-blank")
    blank = tmp_path / "shapes-blank"
    for name in ("train.json", "heldout.json", "train.yaml", "heldout.yaml"):
        assert (blank / name).read_bytes() == (out / name).read_bytes()
    real_images, blank_images = files(out / "images"), files(blank / "images")
    assert real_images.keys() == blank_images.keys() and len(real_images) == 64
    for rel in blank_images:
        px = pixels(blank / "images" / rel)
        assert px.shape == pixels(out / "images" / rel).shape == (48, 48, 3)
        assert (px == 128).all()
    summary = json.loads((blank / "synth.json").read_text())
    assert summary["blank"] is True and summary["blank_of"] == "../shapes"
    assert json.loads((out / "synth.json").read_text())["blank_copy"] == "../shapes-blank"
    assert "media-blanked control" in (blank / "README.md").read_text()
    assert load_card(blank / "heldout.yaml").media_folder == "images"
    # the helper works on any generated folder, and refuses to write over its source or a foreign folder
    again = write_blank_copy(out, tmp_path / "again", progress=False)
    assert again["blank"] and files(tmp_path / "again")["train.json"] == files(blank)["train.json"]
    with pytest.raises(ConfigError, match="folder of its own"):
        write_blank_copy(out, out)
    with pytest.raises(ConfigError, match="not an output folder"):
        write_blank_copy(tmp_path / "again" / "images", tmp_path / "x")


# --------------------------------------------------------------------------- errors and overwriting


@pytest.mark.parametrize("task, kw, message", [
    ("circles", {}, "unknown task 'circles' \\(valid: shapes, shapes-pick, motion"),
    ("shapes", {"train": 0}, "--train must be a whole number of at least 1, got 0"),
    ("shapes", {"heldout": -1}, "--heldout must be"),
    ("shapes", {"questions_per_item": 0}, "--questions-per-item must be"),
    ("shapes", {"frames": 8}, "no option --frames"),
    ("shapes", {"grid": 5}, "--grid must be one of 2, 3"),
    ("shapes", {"image_size": 20}, "--image-size must be at least 36"),
    ("shapes", {"objects": "3-1"}, "MIN <= MAX"),
    ("shapes", {"objects": 10}, "at most 9 objects"),
    ("shapes", {"colors": "red,mauve"}, "--colors"),
    ("shapes", {"question_types": "color,size"}, "--question-types"),
    ("shapes-pick", {"objects": 5}, "2 to 4 objects"),
    ("shapes-pick", {"question_types": "count"}, "--question-types"),
    ("shapes", {"objects": 1, "questions_per_item": 2, "question_types": "color"}, "no scene answers"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, task, kw, message):
    with pytest.raises(ConfigError, match=message) as err:
        make(tmp_path, task=task, **kw)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "shapes").exists()


def test_an_earlier_output_is_replaced_only_with_overwrite_and_nothing_else_is(tmp_path):
    out = make(tmp_path, train=30)
    with pytest.raises(ConfigError, match="--overwrite"):
        make(tmp_path, train=10)
    make(tmp_path, train=10, overwrite=True)
    assert len(list((out / "images" / "train").glob("*.png"))) == 10  # no stale images of the former run
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an output of mmtune data synth"):
        make(tmp_path, "notes", overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_tasks_are_builders_keyed_by_name():
    assert set(SYNTH_TASKS) >= {"shapes", "shapes-pick"}
    for name, builder in SYNTH_TASKS.items():
        source = builder()
        assert source.task == name and source.modality in ("image", "video", "audio", "video+audio")
        assert set(source.answer_sets) == set(source.question_types) == set(source.templates)
