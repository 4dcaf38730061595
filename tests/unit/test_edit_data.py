"""Editing triplets: both readers (diffusers' layout in JSONL / CSV / Parquet, embedded image bytes included; the
original instruct-pix2pix folders), every bad input as one line or a counted skip, size mismatches, paired
augmentation, the shipped photo triplets (rebuilt and compared) and a tiny ``task: edit`` run on them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, write_jsonl
from PIL import Image

from mmtune.config.schema import DatasetSpec
from mmtune.data.edit_formats import read_triplets
from mmtune.data.edit_triplets import TripletCollate
from mmtune.data.sources import resolve_source
from mmtune.errors import DataError


def image(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def png_bytes(size=(12, 10), seed=0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, format="PNG")
    return buffer.getvalue()


def read(on_bad_sample: str = "error", **spec):
    return read_triplets(resolve_source(DatasetSpec(**spec)), on_bad_sample=on_bad_sample)


def card(where: Path, **keys) -> Path:
    where.write_text(yaml.safe_dump({"description": "test", "license": "CC0", **keys}))
    return where


# --------------------------------------------------------------------------- diffusers' layout


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json", "folder"])
def test_diffusers_layout_reads_jsonl_csv_json_and_an_image_folder_with_columns_renamed_by_a_card(tmp_path, suffix):
    data = tmp_path / "data"
    rows = [{"before": f"in{i}.png", "instruction": f"edit number {i}", "after": f"out{i}.png"} for i in range(3)]
    for i in range(3):
        image(data / f"in{i}.png", seed=i)
        image(data / f"out{i}.png", seed=10 + i)
    if suffix == ".csv":
        (data / "rows.csv").write_text("before,instruction,after\n" + "".join(
            f"{r['before']},{r['instruction']},{r['after']}\n" for r in rows))
        path = "data/rows.csv"
    elif suffix == ".json":
        (data / "rows.json").write_text(json.dumps(rows))
        path = "data/rows.json"
    else:
        write_jsonl(data / "metadata.jsonl", rows)
        path = "data" if suffix == "folder" else "data/metadata.jsonl"
    columns = {"input_image": "before", "edit_prompt": "instruction", "edited_image": "after"}
    got = read(card=str(card(tmp_path / "edits.yaml", path=path, format="edit_triplets", columns=columns)))
    assert [t.edit_prompt for t in got.triplets] == [f"edit number {i}" for i in range(3)]
    assert [Path(t.input_image) for t in got.triplets] == [(data / f"in{i}.png").resolve() for i in range(3)]
    assert [Path(t.edited_image) for t in got.triplets] == [(data / f"out{i}.png").resolve() for i in range(3)]
    assert got.report_line(3) == "edits: 3 triplet(s)" and not got.skipped


def parquet(path: Path, table: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path)
    return path


def test_parquet_with_embedded_image_bytes_is_cached_once_by_content(tmp_path, monkeypatch):
    """Hugging Face writes images into Parquet as {bytes, path} structs: the bytes land in the cache once."""
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    shared, a, b = png_bytes(seed=1), png_bytes(seed=2), png_bytes((9, 9), seed=3)
    image(tmp_path / "hub" / "on_disk.png", seed=4)
    structs = parquet(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", {
        "input_image": [{"bytes": shared, "path": "x.png"}, {"bytes": shared, "path": None},
                        {"bytes": None, "path": "on_disk.png"}],
        "edit_prompt": ["make it red", "make it blue", "make it green"],
        "edited_image": [{"bytes": a, "path": None}, {"bytes": b, "path": None}, {"bytes": a, "path": None}],
    })
    spec = {"path": str(structs.parent), "format": "edit_triplets", "media_folder": str(tmp_path / "hub")}
    got = read(**spec)
    assert [t.edit_prompt for t in got.triplets] == ["make it red", "make it blue", "make it green"]
    first, second, third = got.triplets
    assert Path(first.input_image).read_bytes() == shared and first.input_image == second.input_image
    assert Path(first.edited_image).read_bytes() == a and Path(second.edited_image).read_bytes() == b
    assert Path(third.input_image) == (tmp_path / "hub" / "on_disk.png").resolve()
    assert third.edited_image == first.edited_image
    assert Path(first.input_image).is_relative_to(tmp_path / "cache")
    cached = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(cached) == 3  # shared input once, two edited images
    stamps = [p.stat().st_mtime_ns for p in cached]
    again = read(**spec)
    assert [t.input_image for t in again.triplets] == [t.input_image for t in got.triplets]
    assert sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file()) == cached
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # nothing written again
    assert got.resized == 1  # row 2: a 12x10 input, a 9x9 edited image
    assert got.report_line(3).endswith("1 pair(s) of different sizes (the edited image is resized to the input's)")


def test_a_hub_dataset_s_decoded_images_are_cached_like_embedded_bytes(tmp_path, monkeypatch):
    """`datasets` hands Image features over decoded: they are written once (PNG) and read like any file."""
    import mmtune.data.edit_formats as formats

    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    before, after = Image.open(io.BytesIO(png_bytes(seed=1))), Image.open(io.BytesIO(png_bytes(seed=2)))
    monkeypatch.setattr(formats, "iter_rows", lambda src: iter([
        ("user/edits[train]: row 1", {"input_image": before, "edit_prompt": "x", "edited_image": after})]))
    (t,) = read(hub="user/edits", format="edit_triplets").triplets
    for path, original in ((t.input_image, before), (t.edited_image, after)):
        assert Path(path).is_relative_to(tmp_path / "cache")
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(original.convert("RGB")))


def test_parquet_with_path_strings(tmp_path):
    for i in range(2):
        image(tmp_path / "img" / f"a{i}.png", seed=i)
        image(tmp_path / "img" / f"b{i}.png", seed=5 + i)
    path = parquet(tmp_path / "img" / "triplets.parquet", {
        "input_image": ["a0.png", "a1.png"], "edit_prompt": ["flip it", "blur it"],
        "edited_image": ["b0.png", "b1.png"]})
    got = read(path=str(path), format="edit_triplets")
    assert [(Path(t.input_image).name, t.edit_prompt, Path(t.edited_image).name) for t in got.triplets] == [
        ("a0.png", "flip it", "b0.png"), ("a1.png", "blur it", "b1.png")]


# --------------------------------------------------------------------------- instruct-pix2pix's folders


def ip2p(root: Path, samples: dict[str, dict], *, colors: dict | None = None) -> Path:
    """The original layout: ``seeds.json`` ([[name, [seed, ...]], ...]) and per sample ``prompt.json`` and
    ``{seed}_0.jpg`` / ``{seed}_1.jpg``; ``colors[seed]`` paints a seed's pair one flat colour."""
    root.mkdir(parents=True, exist_ok=True)
    for name, sample in samples.items():
        folder = root / name
        folder.mkdir()
        (folder / "prompt.json").write_text(json.dumps(sample["prompt"]))
        for seed in sample["seeds"]:
            for k in (0, 1):
                if colors and seed in colors:
                    Image.new("RGB", (16, 16), colors[seed]).save(folder / f"{seed}_{k}.jpg")
                else:
                    image(folder / f"{seed}_{k}.jpg", size=(16, 16), seed=k, fmt="JPEG")
    (root / "seeds.json").write_text(json.dumps([[name, s["seeds"]] for name, s in samples.items()]))
    return root


def prompt(edit: str) -> dict:
    return {"input": "a photo of a cat", "edit": edit, "output": f"a photo of a cat, {edit}"}


def test_ip2p_folders_one_triplet_per_sample_with_all_its_seed_pairs(tmp_path):
    root = ip2p(tmp_path / "clip-filtered", {"0001_a": {"prompt": prompt("make it snowy"), "seeds": ["11", "12"]},
                                             "0002_b": {"prompt": prompt("add a hat"), "seeds": [7]}})
    by_card = read(card=str(card(tmp_path / "ip2p.yaml", path="clip-filtered", format="ip2p_folders")))
    by_seeds_file = read(path=str(root / "seeds.json"), format="ip2p_folders")
    for got in (by_card, by_seeds_file):
        assert [t.edit_prompt for t in got.triplets] == ["make it snowy", "add a hat"]
        first, second = got.triplets
        assert (first.input_image, first.edited_image) == (str(root / "0001_a" / "11_0.jpg"),
                                                           str(root / "0001_a" / "11_1.jpg"))
        assert first.more_pairs == ((str(root / "0001_a" / "12_0.jpg"), str(root / "0001_a" / "12_1.jpg")),)
        assert (second.input_image, second.more_pairs) == (str(root / "0002_b" / "7_0.jpg"), ())
    assert by_card.report_line(2) == "ip2p: 2 triplet(s) (3 image pairs: one drawn per read)"
    outputs = read(path=str(root), format="ip2p_folders", columns={"edit_prompt": "output"})
    assert [t.edit_prompt for t in outputs.triplets] == ["a photo of a cat, make it snowy",
                                                         "a photo of a cat, add a hat"]


def test_an_ip2p_sample_draws_one_seed_pair_per_read_in_training_and_reads_the_first_in_evaluation(tmp_path):
    root = ip2p(tmp_path / "d", {"s": {"prompt": prompt("recolour"), "seeds": [1, 2, 3]}},
                colors={1: (250, 0, 0), 2: (0, 250, 0), 3: (0, 0, 250)})
    (sample,) = read(path=str(root), format="ip2p_folders").triplets
    ids = np.zeros((1, 4), dtype=np.int64)

    def channel(train: bool, seed: int) -> int:
        torch.manual_seed(seed)
        batch = TripletCollate([sample], ids, resolution=8, sizes=(8, 10), flip=True, train=train)([[0]])
        assert torch.equal(batch.original, batch.edited)  # both images of one seed pair
        return int(batch.original[0].mean((1, 2)).argmax())

    assert {channel(True, s) for s in range(30)} == {0, 1, 2}
    assert {channel(False, s) for s in range(5)} == {0}


# --------------------------------------------------------------------------- bad input


def diffusers_case(tmp_path: Path, case: str) -> tuple[Path, str, list[str]]:
    """A metadata.jsonl with a good row 1 and a bad row 2 -> (file, skip reason, what the error line names)."""
    d = tmp_path / "data"
    for name in ("in.png", "out.png"):
        image(d / name)
    (d / "corrupt.png").write_bytes(b"\x89PNG not really")
    image(tmp_path / "outside.png")
    good = {"input_image": "in.png", "edit_prompt": "flip it", "edited_image": "out.png"}
    bad, reason, named = {
        "missing": ({**good, "edited_image": "gone.png"}, "missing image", ["field 'edited_image'", "not found"]),
        "corrupt": ({**good, "input_image": "corrupt.png"}, "unreadable image", ["field 'input_image'", "corrupt.png"]),
        "escaping": ({**good, "edited_image": "../outside.png"}, "image path escapes media folder",
                     ["field 'edited_image'", "../outside.png"]),
        "empty prompt": ({**good, "edit_prompt": "  "}, "empty edit prompt", ["field 'edit_prompt'", "empty"]),
        "missing field": ({k: v for k, v in good.items() if k != "input_image"}, "missing field",
                          ["field 'input_image'"]),
        "malformed row": ("{\"input_image\": \"in.png\",", "malformed JSON", ["malformed JSON"]),
        "not an image cell": ({**good, "edited_image": 17}, "malformed image field", ["field 'edited_image'", "int"]),
    }[case]
    path = write_jsonl(d / "metadata.jsonl", [good, bad])
    return path, reason, [f"{path}:2", *named]


@pytest.mark.parametrize("case", ["missing", "corrupt", "escaping", "empty prompt", "missing field", "malformed row",
                                  "not an image cell"])
def test_a_bad_triplet_is_one_line_naming_file_row_and_field_or_a_counted_skip(tmp_path, case):
    path, reason, named = diffusers_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        read(path=str(path), format="edit_triplets")
    message = str(err.value)
    assert "\n" not in message and all(part in message for part in named), message
    assert err.value.reason == reason
    got = read("skip", path=str(path), format="edit_triplets")
    assert len(got.triplets) == 1 and got.skipped == {reason: 1}
    assert got.report_line(1) == f"{path}: 1 triplet(s); skipped 1 ({reason})"


def test_a_parquet_image_struct_without_bytes_or_path_is_a_bad_row(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    path = parquet(tmp_path / "p.parquet", {
        "input_image": [{"bytes": png_bytes(), "path": None}, {"bytes": None, "path": None}],
        "edit_prompt": ["a", "b"], "edited_image": [{"bytes": png_bytes(seed=1), "path": None}] * 2})
    with pytest.raises(DataError, match=r"p\.parquet: row 2: field 'input_image': an image struct \{bytes, path\} "
                                        "with neither bytes nor a path"):
        read(path=str(path), format="edit_triplets")
    assert read("skip", path=str(path), format="edit_triplets").skipped == {"malformed image field": 1}


def ip2p_case(tmp_path: Path, case: str) -> tuple[Path, str, list[str]]:
    """Sample 1 good, sample 2 bad -> (root, skip reason, what the error line names)."""
    root = ip2p(tmp_path / "d", {"good": {"prompt": prompt("add snow"), "seeds": [1]},
                                 "bad": {"prompt": prompt("add rain"), "seeds": [5]}})
    seeds = root / "seeds.json"
    entry = f"{seeds}: entry 2"
    if case == "malformed entry":
        seeds.write_text(json.dumps([["good", [1]], "bad"]))
        return root, "malformed seeds.json entry", [entry, "[folder name, [seed, ...]]"]
    if case == "escaping folder":
        seeds.write_text(json.dumps([["good", [1]], ["../elsewhere", [5]]]))
        return root, "sample folder escapes the dataset folder", [entry, "../elsewhere", "resolves outside"]
    if case == "escaping seed":
        seeds.write_text(json.dumps([["good", [1]], ["bad", ["../good/1"]]]))
        return root, "image path escapes media folder", [entry, "file '../good/1_0.jpg'", "resolves outside"]
    prompt_file = root / "bad" / "prompt.json"
    if case == "malformed prompt.json":
        prompt_file.write_text("{\"edit\": ")
        return root, "malformed prompt.json", [entry, str(prompt_file), "malformed prompt.json"]
    if case == "prompt.json without edit":
        prompt_file.write_text(json.dumps({"input": "a cat", "edit": "", "output": "a cat"}))
        return root, "empty edit prompt", [entry, str(prompt_file), "field 'edit'", "empty"]
    if case == "missing prompt.json":
        prompt_file.unlink()
        return root, "missing prompt.json", [entry, str(prompt_file), "not found"]
    if case == "missing image":
        (root / "bad" / "5_1.jpg").unlink()
        return root, "missing image", [entry, "seed 5", "file '5_1.jpg'", "not found"]
    if case == "corrupt image":
        (root / "bad" / "5_0.jpg").write_bytes(b"\xff\xd8 truncated")
        return root, "unreadable image", [entry, "seed 5", "file '5_0.jpg'", "cannot read image"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["malformed entry", "escaping folder", "escaping seed", "malformed prompt.json",
                                  "prompt.json without edit", "missing prompt.json", "missing image", "corrupt image"])
def test_a_bad_ip2p_sample_is_one_line_naming_seeds_json_entry_and_file_or_a_counted_skip(tmp_path, case):
    root, reason, named = ip2p_case(tmp_path, case)
    with pytest.raises(DataError) as err:
        read(path=str(root), format="ip2p_folders")
    message = str(err.value)
    assert "\n" not in message and all(part in message for part in named), message
    got = read("skip", path=str(root), format="ip2p_folders")
    assert [t.edit_prompt for t in got.triplets] == ["add snow"] and got.skipped == {reason: 1}


def test_an_unreadable_or_missing_seeds_json_stops_even_when_skipping(tmp_path):
    root = ip2p(tmp_path / "d", {"a": {"prompt": prompt("x"), "seeds": [1]}})
    (root / "seeds.json").write_text("[[\"a\", [1]],\n oops")
    with pytest.raises(DataError, match=r"seeds\.json:2: malformed JSON"):
        read("skip", path=str(root), format="ip2p_folders")
    (root / "seeds.json").write_text(json.dumps({"a": [1]}))
    with pytest.raises(DataError, match=r"seeds\.json: expected a JSON list of \[folder name, \[seed, \.\.\.\]\], "
                                        "got dict"):
        read("skip", path=str(root), format="ip2p_folders")
    with pytest.raises(DataError, match=r"nowhere/seeds\.json: not found \(dataset card 'lost' at .*lost\.yaml; "
                                        "format ip2p_folders needs the dataset root folder"):
        read("skip", card=str(card(tmp_path / "lost.yaml", path="nowhere", format="ip2p_folders")))


def test_a_bad_row_stops_mmtune_train_with_one_line_not_a_traceback(tmp_path, tiny_sd_dir, capsys):
    from mmtune.cli import main

    path, _, named = diffusers_case(tmp_path, "missing")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "task": "edit", "output_dir": str(tmp_path / "run"), "model": {"name": str(tiny_sd_dir)},
        "data": {"datasets": [{"path": str(path), "format": "edit_triplets"}], "resolution": 8, "num_workers": 0},
        "train": {"max_steps": 1, "progress": False, "tensorboard": False}}))
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmtune: error: ")]
    assert "Traceback" not in err and len(lines) == 1 and all(part in lines[0] for part in named), err


# --------------------------------------------------------------------------- sizes and augmentation


def test_a_pair_of_different_sizes_is_kept_counted_and_resized_in_the_batch(tmp_path):
    image(tmp_path / "a.png", size=(20, 12))
    image(tmp_path / "b.png", size=(9, 15), seed=1)
    image(tmp_path / "c.png", size=(20, 12), seed=2)
    path = write_jsonl(tmp_path / "m.jsonl", [{"input_image": "a.png", "edit_prompt": "x", "edited_image": "b.png"},
                                              {"input_image": "a.png", "edit_prompt": "y", "edited_image": "c.png"}])
    got = read(path=str(path), format="edit_triplets")
    assert len(got.triplets) == 2 and got.resized == 1
    assert got.report_line(2) == (f"{path}: 2 triplet(s); 1 pair(s) of different sizes (the edited image is "
                                  "resized to the input's)")
    batch = TripletCollate(got.triplets, np.zeros((2, 3), dtype=np.int64), resolution=8, sizes=(8, 9), flip=True,
                           train=True)([[0, 1]])
    assert batch.original.shape == batch.edited.shape == (2, 3, 8, 8) and not batch.problems


def test_paired_augmentation_crops_and_flips_both_images_alike(tmp_path):
    """The edited image is the input with its channels reversed: after augmentation it still is, exactly."""
    pixels = np.random.default_rng(0).integers(0, 255, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    Image.fromarray(np.ascontiguousarray(pixels[..., ::-1])).save(tmp_path / "out.png")
    path = write_jsonl(tmp_path / "m.jsonl", [{"input_image": "in.png", "edit_prompt": "x", "edited_image": "out.png"}])
    samples = read(path=str(path), format="edit_triplets").triplets
    ids = np.zeros((1, 3), dtype=np.int64)

    def batch(seed: int, sizes: tuple[int, int]):
        torch.manual_seed(seed)
        return TripletCollate(samples, ids, resolution=16, sizes=sizes, flip=True, train=True)([[0]])

    # Flips alone (no resize range): both images flipped, or neither, and both happen.
    plain = TripletCollate(samples, ids, resolution=16, sizes=(16, 16), flip=True, train=False)([[0]]).original[0]
    flipped = set()
    for seed in range(12):
        b = batch(seed, (16, 16))
        assert torch.equal(b.edited[0], b.original[0].flip(0))
        flipped.add(torch.equal(b.original[0], plain.flip(-1)))
        assert torch.equal(b.original[0], plain) or torch.equal(b.original[0], plain.flip(-1))
    assert flipped == {True, False}
    # Random resizes and crops: still the same crop on both, and the crops vary.
    crops = []
    for seed in range(12):
        b = batch(seed, (16, 30))
        assert torch.equal(b.edited[0], b.original[0].flip(0))
        crops.append(b.original[0])
    assert len({c.numpy().tobytes() for c in crops}) > 6


# --------------------------------------------------------------------------- the shipped photo triplets


def test_the_shipped_photo_triplets_are_what_their_builder_writes(tmp_path):
    from mmtune.datagen.photo_edits import build_photo_edits

    shipped = REPO / "datasets" / "mmtune-edits"
    rows = build_photo_edits(tmp_path / "rebuilt")
    assert sorted(p.name for p in (tmp_path / "rebuilt").iterdir()) == sorted(p.name for p in shipped.iterdir())
    for name in ("metadata.jsonl", "README.md"):
        assert (tmp_path / "rebuilt" / name).read_text() == (shipped / name).read_text(), name
    for png in sorted(shipped.glob("*.png")):
        with Image.open(png) as a, Image.open(tmp_path / "rebuilt" / png.name) as b:
            assert a.mode == b.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b)), png.name
    assert len(rows) == 20 and len({r["input_image"] for r in rows}) == 5
    assert len({r["edit_prompt"] for r in rows}) == 20  # every instruction written for its own triplet


def test_the_shipped_card_reads_twenty_triplets_whose_edits_are_what_they_say():
    got = read(card="mmtune-edits")
    assert len(got.triplets) == 20 and not got.skipped and not got.resized
    meta = {json.loads(line)["edit_prompt"]: json.loads(line)["edit"]
            for line in (REPO / "datasets" / "mmtune-edits" / "metadata.jsonl").read_text().splitlines()}
    for t in got.triplets:
        with Image.open(t.input_image) as a, Image.open(t.edited_image) as b:
            x, y = np.asarray(a).astype(int), np.asarray(b).astype(int)
        edit = meta[t.edit_prompt]
        assert x.shape == y.shape == (96, 96, 3) and not np.array_equal(x, y), t
        if edit == "flip":
            assert np.array_equal(y, x[:, ::-1])
        elif edit == "grayscale":
            assert np.array_equal(y[..., 0], y[..., 1]) and np.array_equal(y[..., 1], y[..., 2])
        elif edit == "brighten":
            assert (y >= x).all() and y.mean() > x.mean() + 10
        elif edit == "blur":  # smoother: smaller differences between neighbours
            assert np.abs(np.diff(y, axis=1)).mean() < 0.7 * np.abs(np.diff(x, axis=1)).mean()
        elif edit == "warm":
            assert (y[..., 0] >= x[..., 0]).all() and (y[..., 2] <= x[..., 2]).all()
        else:  # a tint toward blue or green: that channel's share grows
            k = {"blue_tint": 2, "green_tint": 1}[edit]
            assert y[..., k].sum() / y.sum() > x[..., k].sum() / x.sum()
    card_file = yaml.safe_load((REPO / "datasets" / "mmtune-edits.yaml").read_text())
    assert "CC0" in card_file["license"] and "public domain" in card_file["license"]
