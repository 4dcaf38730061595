"""Synthetic editing triplets: coloured shapes, an instruction, and the image with exactly that edit.

``mmtune data synth edits --out DIR`` writes what an instruction-editing model (``task: edit``) can learn on
a CPU, with a score that says whether it followed the instruction:

- an input image is a scene of :mod:`.shapes` (2-3 shapes in distinct cells of a coarse grid, 32 px);
- an edit recolours one object (``color``: "make the circle red") or moves it one cell into an empty cell
  (``move``: "move the square left"); the object is named by its shortest unique description, and the
  edited image is the edited scene rendered: nothing else changes;
- every input admits many edits (each object, each other colour, each free neighbouring cell), drawn
  uniformly, so the instruction decides the output. ``--questions-per-item Q`` writes Q different edits of
  the same input. The control (``--blank DIR``) keeps every image and replaces every instruction with one
  fixed neutral text, :data:`BLANK_INSTRUCTION` (not an empty one: readers refuse empty edit prompts, and the
  empty prompt is the unconditional embedding of classifier-free guidance): trained there, a model can only
  learn which edits an image admits, never which one is asked. What that can score at best is the summary's
  ``chance``;
- a correct edit is written into every row (the named object ``before`` and ``after``, the whole
  ``edited_scene``) and :func:`score_edit` scores any image against it: the colour of the named object after
  editing, and whether everything the edit must and must not change is so.

Splits, dedup (no held-out input image in train) and seeding are :mod:`.common`'s; the rows, cards, summary,
data card and control of this triplet layout are written here.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmtune.datagen.synth.common import (
    LICENSE,
    README_FILE,
    SPLITS,
    SUMMARY_FILE,
    SynthItem,
    SynthQuestion,
    SynthSource,
    check_split_arguments,
    check_writable,
    draw_split,
    item_width,
    relative_to_folder,
)
from mmtune.datagen.synth.shapes import (
    BACKGROUND,
    COLORS,
    MAX_DRAWS,
    POSITIONS,
    ShapesSpec,
    _spec,
    describe,
    pixel_key,
    render,
)
from mmtune.errors import ConfigError
from mmtune.utils.atomic import atomic_directory

LAYOUT = "edit_triplets"
EDIT_TYPES = ("color", "move")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
"""Direction -> (row, column) step of one grid cell."""
TEMPLATES: dict[str, list[str]] = {
    "color": ["make the {name} {value}", "turn the {name} {value}", "paint the {name} {value}"],
    "move": ["move the {name} {value}", "shift the {name} one cell {value}"],
}
BLANK_INSTRUCTION = "edit the image"
"""Every instruction of the control: one fixed text, so it says nothing about which edit is asked."""
ROWS_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class Edit:
    type: str
    target: int
    """Index of the edited object in the scene's ``objects``."""
    value: str
    """The new colour (``color``) or the direction (``move``)."""


def candidates(scene: dict[str, Any], edit_type: str, spec: ShapesSpec | None) -> list[Edit]:
    """Every edit of a type the scene admits: each uniquely nameable object, each other colour of ``spec``'s
    palette, or each direction whose neighbouring cell is inside the grid and empty (no ``spec`` needed)."""
    objects, grid = scene["objects"], scene["grid"]
    taken = {(o["row"], o["col"]) for o in objects}
    found = []
    for i, o in enumerate(objects):
        if describe(objects, i) is None:
            continue
        if edit_type == "color":
            assert spec is not None
            found += [Edit("color", i, c) for c in spec.colors if c != o["color"]]
        elif edit_type == "move":
            for direction, (dr, dc) in DIRECTIONS.items():
                row, col = o["row"] + dr, o["col"] + dc
                if 0 <= row < grid and 0 <= col < grid and (row, col) not in taken:
                    found.append(Edit("move", i, direction))
        else:
            raise AssertionError(edit_type)
    return found


def apply_edit(scene: dict[str, Any], edit: Edit) -> dict[str, Any]:
    """The edited scene: the one object recoloured, or moved one cell with the same offset inside its cell."""
    out = copy.deepcopy(scene)
    o = out["objects"][edit.target]
    if edit.type == "color":
        o["color"] = edit.value
        return out
    cell = scene["size"] / scene["grid"]
    dr, dc = DIRECTIONS[edit.value]
    dx, dy = o["x"] - int((o["col"] + 0.5) * cell), o["y"] - int((o["row"] + 0.5) * cell)
    o["row"], o["col"] = o["row"] + dr, o["col"] + dc
    o["x"], o["y"] = int((o["col"] + 0.5) * cell) + dx, int((o["row"] + 0.5) * cell) + dy
    o["position"] = POSITIONS[scene["grid"]][o["row"] * scene["grid"] + o["col"]]
    return out


def _question(scene: dict[str, Any], edit: Edit, counts: dict[str, int], rng: random.Random) -> SynthQuestion:
    name = describe(scene["objects"], edit.target)
    text = rng.choice(TEMPLATES[edit.type]).format(name=name, value=edit.value)
    edited = apply_edit(scene, edit)
    return SynthQuestion(edit.type, text, edit.value, {
        "target": edit.target, "name": name, "before": scene["objects"][edit.target],
        "after": edited["objects"][edit.target], "candidates": counts, "edited_scene": edited,
    }, media=render(edited))


def build_edits(*, image_size: int = 32, grid: int = 2, objects: int | str = "2-3",
                colors: str | Sequence[str] = "red,green,blue,yellow",
                shapes: str | Sequence[str] = "circle,square,triangle") -> SynthSource:
    """``edits``: recolour or move one named shape; the triplet layout (``input_image``, ``edit_prompt``,
    ``edited_image``) for ``task: edit``."""
    spec = _spec("edits", image_size, grid, objects, colors, shapes, distinct=False)
    if spec.max_objects >= grid * grid:
        raise ConfigError(f"synth edits: --objects {objects}: leave a {grid}x{grid} grid at least one empty cell "
                          "(a move needs one)")

    def draw(rng: random.Random, wanted: Sequence[str]) -> SynthItem:
        for _ in range(MAX_DRAWS):
            scene = spec.scene(rng)
            pools = {t: candidates(scene, t, spec) for t in EDIT_TYPES}
            counts = {t: len(pools[t]) for t in EDIT_TYPES}
            chosen: list[Edit] = []
            for t in wanted:
                pool = [e for e in pools[t] if e not in chosen]
                if not pool:
                    break
                chosen.append(rng.choice(pool))
            else:
                image = render(scene)
                return SynthItem(image, pixel_key(image), scene, [_question(scene, e, counts, rng) for e in chosen])
        raise ConfigError(f"synth edits: no scene admits {len(wanted)} distinct edits of types {', '.join(wanted)}; "
                          "ask for fewer per image (--questions-per-item) or allow more objects or colours")

    k = f"{spec.min_objects}" if spec.min_objects == spec.max_objects else f"{spec.min_objects} to {spec.max_objects}"
    description = (
        f"Each input is a {spec.image_size}x{spec.image_size} PNG with {k} objects ({', '.join(spec.shapes)}; "
        f"{', '.join(spec.colors)}; colours and shapes may repeat) in distinct cells of a {spec.grid}x{spec.grid} "
        "grid on a plain grey background. Its edit recolours one object (`color`: \"make the circle red\") or "
        "moves it one cell into an empty neighbouring cell with the same offset in its cell (`move`: \"move the "
        "square left\"); the object is named by its shortest unique description (its shape, its colour, or "
        "both). The edited image is the edited scene rendered: nothing else changes. Every input admits many "
        "edits (each object, each other colour, each free neighbouring cell), drawn uniformly, so only the "
        "instruction says which one is asked. Edit types take turns.")
    return SynthSource(
        task="edits", modality="image", question_types=EDIT_TYPES,
        answer_sets={"color": list(spec.colors), "move": list(DIRECTIONS)}, templates=TEMPLATES,
        parameters={"image_size": spec.image_size, "grid": spec.grid,
                    "objects": f"{spec.min_objects}-{spec.max_objects}", "colors": ",".join(spec.colors),
                    "shapes": ",".join(spec.shapes)},
        description=description, draw=draw, layout=LAYOUT,
    )


# --------------------------------------------------------------------------- scoring an edited image


def nearest_color(pixel: Sequence[float]) -> str:
    """The palette colour (or ``background``) nearest to an RGB value."""
    palette = {**COLORS, "background": BACKGROUND}
    return min(palette, key=lambda name: sum((float(a) - b) ** 2 for a, b in zip(pixel, palette[name])))


def score_edit(row: dict[str, Any], image) -> dict[str, Any]:
    """Score an image (a PIL image, e.g. a model's output) against a row's edit.

    ``named_color``: the colour at the named object's centre after the edit (a 3x3 mean, nearest palette
    colour or ``background``); ``color_correct``: it is the object's colour after the edit. ``correct``: every
    object of the edited scene shows its colour at its centre and, for a move, the cell it left and every
    other free cell it could have moved to show the background: exactly the asked edit, so one image is
    correct for at most one of an input's candidate edits (what makes ``chance`` a ceiling of an editor that
    ignores the instruction).
    """
    import numpy as np
    from PIL import Image

    edited = row["edited_scene"]
    size = edited["size"]
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float64)

    def color_at(x: int, y: int) -> str:
        patch = pixels[max(0, y - 1): y + 2, max(0, x - 1): x + 2].reshape(-1, 3)
        return nearest_color(patch.mean(0))

    after = row["after"]
    named = color_at(after["x"], after["y"])
    checks = [color_at(o["x"], o["y"]) == o["color"] for o in edited["objects"]]
    if row["edit_type"] == "move":
        scene, before = row["scene"], row["before"]
        checks.append(color_at(before["x"], before["y"]) == "background")
        for other in candidates(scene, "move", None):
            if other.target == row["target"] and other.value != row["answer"]:
                o = apply_edit(scene, other)["objects"][row["target"]]
                checks.append(color_at(o["x"], o["y"]) == "background")
    return {"named_color": named, "color_correct": named == after["color"], "correct": all(checks)}


# --------------------------------------------------------------------------- writing the sets


def generate_edit_sets(source: SynthSource, out_dir: Path, *, train: int, heldout: int, seed: int,
                       questions_per_item: int = 1, question_types: Sequence[str] | None = None,
                       command: str | None = None, blank_copy: str | None = None, overwrite: bool = False,
                       progress: bool = True) -> dict[str, Any]:
    """Draw both splits of a triplet source and write them in diffusers' layout (replaced atomically).

    ``OUT/{split}/metadata.jsonl`` (``input_image``, ``edit_prompt``, ``edited_image`` and what the edit
    is), the images next to it (``00000.png`` the input, ``00000-e0.png`` its first edit), a card per split,
    ``synth.json`` and the README data card. Returns the summary.
    """
    types = check_split_arguments(source, out_dir, train=train, heldout=heldout,
                                  questions_per_item=questions_per_item, question_types=question_types,
                                  overwrite=overwrite)
    rows: dict[str, list[dict]] = {}
    outputs: dict[str, list[bytes]] = {}
    with atomic_directory(Path(out_dir)) as tmp:
        held_keys: set = set()
        for split, count in (("heldout", heldout), ("train", train)):
            folder = tmp / split
            folder.mkdir()
            width = item_width(count)
            rows[split], outputs[split], keys = [], [], set()
            for index, item in draw_split(source, split, count, seed=seed, per_item=questions_per_item, types=types,
                                          exclude=held_keys, progress=progress):
                keys.add(item.key)
                stem = f"{index:0{width}d}"
                item.media.save(folder / f"{stem}.png", format="PNG")
                for k, q in enumerate(item.questions):
                    q.media.save(folder / f"{stem}-e{k}.png", format="PNG")
                    outputs[split].append(pixel_key(q.media))
                    rows[split].append({
                        "input_image": f"{stem}.png", "edit_prompt": q.question, "edited_image": f"{stem}-e{k}.png",
                        "id": f"{source.task}-{split}-{stem}-e{k}", "edit_type": q.question_type,
                        "instruction": q.question, "answer": q.answer, **q.fields, "scene": item.scene,
                    })
            if split == "heldout":
                held_keys = keys
            (folder / ROWS_FILE).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]))
            (tmp / f"{split}.yaml").write_text(card_text(source, split, len(rows[split])))
        summary = summarize_edits(source, rows, outputs, seed=seed, questions_per_item=questions_per_item,
                                  question_types=types, command=command)
        summary["blank_copy"] = None if blank_copy is None else relative_to_folder(blank_copy, out_dir)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / README_FILE).write_text(readme_text(summary))
    return summary


def card_text(source: SynthSource, split: str, rows: int) -> str:
    card = {"description": f"mmtune data synth {source.task}: {rows} {split} editing triplets in diffusers' layout "
                           "(data card: README.md in this folder)",
            "license": LICENSE, "path": f"{split}/{ROWS_FILE}", "format": LAYOUT}
    return yaml.safe_dump(card, sort_keys=False, width=1000)


def instruction_blind_ceiling(row: dict[str, Any], shares: dict[str, float]) -> float:
    """The best accuracy on this row of an editor that sees the input but not the instruction: the largest
    probability of one candidate edit given the image, ``max_t share_t / candidates_t`` (the edit type is drawn
    by turn, the edit uniformly among the image's candidates of that type; a correct image matches one)."""
    counts = row["candidates"]
    return max((share / counts[t] for t, share in shares.items() if counts.get(t)), default=0.0)


def summarize_edits(source: SynthSource, rows: dict[str, list[dict]], outputs: dict[str, list[bytes]], *, seed: int,
                    questions_per_item: int, question_types: list[str], command: str | None) -> dict[str, Any]:
    splits = {}
    for split in SPLITS:
        by_type: dict[str, list[dict]] = defaultdict(list)
        for row in rows[split]:
            by_type[row["edit_type"]].append(row)
        total = len(rows[split])
        shares = {t: len(by_type[t]) / total for t in question_types}
        ceilings = [instruction_blind_ceiling(r, shares) for r in rows[split]]
        types = {}
        for t in question_types:
            if by_type[t]:
                answers = Counter(r["answer"] for r in by_type[t])
                own = [instruction_blind_ceiling(r, shares) for r in by_type[t]]
                types[t] = {"rows": len(by_type[t]),
                            "answers": {a: answers[a] for a in source.answer_sets[t] if answers[a]},
                            "chance": round(sum(own) / len(own), 4)}
        splits[split] = {"items": len({r["input_image"] for r in rows[split]}), "rows": total,
                         "question_types": types, "chance": round(sum(ceilings) / total, 4)}
    held = splits["heldout"]["question_types"]
    return {
        "task": source.task, "modality": source.modality, "layout": LAYOUT, "blank": False, "seed": seed,
        "questions_per_item": questions_per_item, "question_types": question_types,
        "parameters": source.parameters, "command": command, "description": source.description,
        "templates": {t: source.templates[t] for t in question_types},
        "answer_sets": {t: source.answer_sets[t] for t in question_types},
        "chance": {**{t: held[t]["chance"] for t in question_types if t in held},
                   "overall": splits["heldout"]["chance"]},
        "question_only": _instruction_only(rows, outputs, question_types),
        "blank_instruction": BLANK_INSTRUCTION,
        "correct_edit": "score_edit(row, image) in mmtune.datagen.synth.edits: the named object (row 'name', "
                        "'target') must show its colour after the edit (row 'after': colour, x, y) and every other "
                        "object of row 'edited_scene' its own; a move also leaves the cell it left (row 'before') "
                        "and its other free neighbouring cells background",
        "splits": splits,
        "files": {split: {"rows": f"{split}/{ROWS_FILE}", "card": f"{split}.yaml", "media": f"{split}/"}
                  for split in SPLITS},
    }


def _instruction_only(rows: dict[str, list[dict]], outputs: dict[str, list[bytes]],
                      question_types: list[str]) -> dict[str, float]:
    """Held-out accuracy of answering each instruction with the edited image it most often got in train,
    never looking at the input: the question-only baseline of an editor (exact images)."""
    seen: dict[str, Counter] = defaultdict(Counter)
    for row, key in zip(rows["train"], outputs["train"]):
        seen[row["edit_prompt"]][key] += 1
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, key in zip(rows["heldout"], outputs["heldout"]):
        counts = seen.get(row["edit_prompt"])
        hits[row["edit_type"]].append(bool(counts) and counts.most_common(1)[0][0] == key)
    result = {t: round(sum(h) / len(h), 4) for t in question_types if (h := hits.get(t))}
    every = [x for h in hits.values() for x in h]
    result["overall"] = round(sum(every) / len(every), 4) if every else 0.0
    return result


# --------------------------------------------------------------------------- the instruction-blanked control


def write_instruction_blank_copy(src_dir: str | Path, dst_dir: str | Path, *, overwrite: bool = False,
                                 progress: bool = True) -> dict[str, Any]:
    """Copy an edit set with every ``edit_prompt`` replaced by :data:`BLANK_INSTRUCTION`: the control run's data.

    Images, cards and every other row field (``instruction`` keeps what was asked, for scoring) are the same;
    ``synth.json`` and the README say ``blank``. Written atomically. Returns the control's summary.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not (src / SUMMARY_FILE).is_file():
        raise ConfigError(f"{src}: not an output folder of mmtune data synth (no {SUMMARY_FILE})")
    if src.resolve() == dst.resolve():
        raise ConfigError(f"{dst}: the blanked copy needs a folder of its own")
    summary = json.loads((src / SUMMARY_FILE).read_text())
    if summary.get("layout") != LAYOUT:
        raise ConfigError(f"{src}: not an edit set (its control blanks the media: use write_blank_copy)")
    check_writable(dst, overwrite)
    with atomic_directory(dst) as tmp:
        for split in SPLITS:
            shutil.copytree(src / split, tmp / split)
            shutil.copyfile(src / f"{split}.yaml", tmp / f"{split}.yaml")
            rows = [json.loads(line) for line in (src / split / ROWS_FILE).read_text().splitlines()]
            (tmp / split / ROWS_FILE).write_text("".join(
                json.dumps({**r, "edit_prompt": BLANK_INSTRUCTION}, ensure_ascii=False) + "\n" for r in rows))
        summary = {**summary, "blank": True, "blank_of": relative_to_folder(src, dst), "blank_copy": None}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        (tmp / README_FILE).write_text(readme_text(summary))
    return summary


# --------------------------------------------------------------------------- the data card


def readme_text(summary: dict[str, Any]) -> str:
    """The data card of a generated edit set, from its summary alone."""
    blank = summary.get("blank")
    lines = [f"# mmtune data synth: `{summary['task']}`{' (instruction-blanked control)' if blank else ''}", ""]
    if blank:
        lines += [f"**Control copy.** The images, cards and row fields are those of `{summary.get('blank_of')}` "
                  f"(relative to this folder), but every `edit_prompt` is `{summary['blank_instruction']}` (the "
                  "instruction asked is kept in `instruction`, for scoring). A model trained here can learn which "
                  "edits an image admits, never which one is asked: compare its held-out score with the real "
                  "run's and with the instruction-blind ceiling below.", ""]
    elif summary.get("blank_copy"):
        lines += [f"Instruction-blanked control (same images, every `edit_prompt` "
                  f"`{summary['blank_instruction']}`): `{summary['blank_copy']}` (relative to this folder).", ""]
    lines += [summary["description"], ""]
    lines += ["## Files", "",
              f"- `train/{ROWS_FILE}`, `heldout/{ROWS_FILE}`: one row per edit in diffusers' layout: "
              "`input_image`, `edit_prompt`, `edited_image` (file names in the same folder), and what the edit "
              "is: `id`, `edit_type`, `instruction`, `answer` (the new colour or the direction), `target` (the "
              "object's index), `name` (how the instruction names it), `before` and `after` (the object), "
              "`candidates` (how many edits of each type the input admits), `scene` and `edited_scene`.",
              "- `train/`, `heldout/`: `NNNNN.png` the inputs, `NNNNN-eK.png` their K-th edit. No held-out input "
              "appears in train: the held-out split is drawn first, from its own seeded stream, and train skips "
              "its images.",
              "- `train.yaml`, `heldout.yaml`: dataset cards (`format: edit_triplets`); in a recipe "
              "`data.datasets: [{card: FOLDER/train.yaml}]`.",
              f"- `{SUMMARY_FILE}`: parameters, counts per split and edit type, the instruction-blind ceiling "
              "(`chance`) and the instruction-only baseline (`question_only`).", "",
              "## Scoring", "",
              "`mmtune.datagen.synth.edits.score_edit(row, image)` reads an edited image (a model's) at the "
              "objects' centres: `named_color` (the colour of the named object after the edit) and "
              "`color_correct`, and `correct`: exactly the asked edit (every object of `edited_scene` shows its "
              "colour; a move leaves its old cell and its other free neighbouring cells background).", "",
              "## Edits", "", "| type | instructions | values |", "|---|---|---|"]
    for t in summary["question_types"]:
        templates = "<br>".join(f"`{x}`" for x in summary["templates"][t])
        lines.append(f"| {t} | {templates} | {', '.join(summary['answer_sets'][t])} |")
    lines += ["", "## Baselines (held-out split)", "",
              "*instruction-blind ceiling* (`chance`): the best score of an editor that sees the input but not "
              "the instruction (what the control can reach): per row the largest probability of one candidate "
              "edit given the image. *instruction-only* (`question_only`): answering each instruction with the "
              "edited image it most often got in train, never looking at the input.", "",
              "| type | held-out rows | instruction-blind ceiling | instruction-only | values (held-out) |",
              "|---|---|---|---|---|"]
    held = summary["splits"]["heldout"]["question_types"]
    for t in summary["question_types"]:
        if t in held:
            s = held[t]
            dist = ", ".join(f"{a} {n}" for a, n in s["answers"].items())
            lines.append(f"| {t} | {s['rows']} | {s['chance']:.3f} | {summary['question_only'].get(t, 0.0):.3f} | "
                         f"{dist} |")
    lines.append(f"| all | {summary['splits']['heldout']['rows']} | {summary['chance']['overall']:.3f} | "
                 f"{summary['question_only']['overall']:.3f} | |")
    lines += ["", "## Generation parameters", ""]
    for split in SPLITS:
        s = summary["splits"][split]
        lines.append(f"- {split}: {s['items']} input images, {s['rows']} edits")
    lines.append(f"- seed: {summary['seed']}; edits per input image: {summary['questions_per_item']}")
    for name, value in summary["parameters"].items():
        lines.append(f"- {name}: {value}")
    if summary.get("command"):
        lines += ["", "Regenerate (identical files; `--blank DIR` also writes the instruction-blanked control):", "",
                  "```", summary["command"], "```"]
    lines += ["", "## Licence", "", LICENSE + ".", ""]
    return "\n".join(lines)
