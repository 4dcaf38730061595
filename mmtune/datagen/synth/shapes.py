"""Coloured shapes on a plain background, and one-word questions about their colour, shape, count and position.

Two tasks:

- ``shapes``: 1-3 objects (colours and shapes may repeat) in distinct cells of a coarse grid; questions about
  an object's colour (named by its shape), its shape (named by its colour), counts, and its grid cell;
- ``shapes-pick``: K objects of K distinct colours and K distinct shapes; the question picks one object (by
  its shape, or by its colour) and asks for its other attribute, so the answer depends on the question as
  much as on the image: the instruction-aware ablation.

A scene is a JSON description (``size``, ``grid``, ``background``, ``objects``: shape, colour, cell ``position``
with ``row``/``col``, centre ``x``/``y`` in pixels, ``radius``); the image is drawn from it alone, and every answer
can be recomputed from it.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmtune.datagen.synth.common import (
    BLANK_GREY,
    SynthItem,
    SynthQuestion,
    SynthSource,
)
from mmtune.errors import ConfigError

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 230), "yellow": (245, 215, 20),
    "purple": (140, 50, 190), "orange": (245, 130, 20), "white": (250, 250, 250), "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")
PLURAL = {"cross": "crosses"}
POSITIONS: dict[int, list[str]] = {
    2: ["top-left", "top-right", "bottom-left", "bottom-right"],
    3: ["top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"],
}
"""Cell names, row by row."""
BACKGROUND = BLANK_GREY
TEMPLATES: dict[str, list[str]] = {
    "color": ["What color is the {shape}?"],
    "shape": ["What shape is the {color} object?"],
    "count": ["How many objects are there?", "How many {color} objects are there?", "How many {shapes} are there?"],
    "position": ["Where is the {shape}?", "Where is the {color} object?", "Where is the {color} {shape}?"],
}
MAX_DRAWS = 1000


@dataclass(frozen=True)
class ShapesSpec:
    image_size: int
    grid: int
    min_objects: int
    max_objects: int
    colors: tuple[str, ...]
    shapes: tuple[str, ...]
    distinct: bool
    """Every object of an image has its own colour and its own shape (``shapes-pick``)."""

    def scene(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(self.min_objects, self.max_objects)
        cells = sorted(rng.sample(range(self.grid * self.grid), n))
        if self.distinct:
            colors, shapes = rng.sample(self.colors, n), rng.sample(self.shapes, n)
        else:
            colors, shapes = [rng.choice(self.colors) for _ in cells], [rng.choice(self.shapes) for _ in cells]
        cell = self.image_size / self.grid
        r_lo = max(3, int(cell * 0.28))
        r_hi = max(r_lo, int(cell * 0.40))
        objects = []
        for c, color, shape in zip(cells, colors, shapes):
            row, col = divmod(c, self.grid)
            radius = rng.randint(r_lo, r_hi)
            slack = max(0, int(cell / 2 - radius - 1))
            x = int((col + 0.5) * cell) + rng.randint(-slack, slack)
            y = int((row + 0.5) * cell) + rng.randint(-slack, slack)
            objects.append({"shape": shape, "color": color, "position": POSITIONS[self.grid][c], "row": row,
                            "col": col, "x": x, "y": y, "radius": radius})
        return {"size": self.image_size, "grid": self.grid, "background": list(BACKGROUND), "objects": objects}


def pixel_key(image) -> bytes:
    """Equal exactly for identical images (two scenes can render alike: small squares of nearby radii)."""
    return hashlib.blake2b(image.tobytes(), digest_size=16, person=b"%dx%d" % image.size).digest()


def render(scene: dict[str, Any]):
    """The scene as a PIL RGB image (every object's centre pixel has its colour)."""
    from PIL import Image, ImageDraw

    size = scene["size"]
    image = Image.new("RGB", (size, size), tuple(scene["background"]))
    draw = ImageDraw.Draw(image)
    for o in scene["objects"]:
        x, y, r, fill = o["x"], o["y"], o["radius"], COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        elif o["shape"] == "square":
            a = round(r * 0.85)
            draw.rectangle([x - a, y - a, x + a, y + a], fill=fill)
        elif o["shape"] == "triangle":
            draw.polygon([(x, y - r), (x + r, y + round(r * 0.8)), (x - r, y + round(r * 0.8))], fill=fill)
        elif o["shape"] == "diamond":
            draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
        elif o["shape"] == "cross":
            t = max(1, round(r * 0.33))
            draw.rectangle([x - r, y - t, x + r, y + t], fill=fill)
            draw.rectangle([x - t, y - r, x + t, y + r], fill=fill)
        else:
            raise AssertionError(o["shape"])
    return image


# --------------------------------------------------------------------------- questions


def describe(objects: list[dict], i: int) -> str | None:
    """The shortest unique name of object ``i``: its shape, its colour, or both (None for an identical twin)."""
    o = objects[i]
    shapes = Counter(x["shape"] for x in objects)
    colors = Counter(x["color"] for x in objects)
    pairs = Counter((x["color"], x["shape"]) for x in objects)
    if shapes[o["shape"]] == 1:
        return o["shape"]
    if colors[o["color"]] == 1:
        return f"{o['color']} object"
    if pairs[(o["color"], o["shape"])] == 1:
        return f"{o['color']} {o['shape']}"
    return None


def candidates(question_type: str, scene: dict[str, Any], spec: ShapesSpec) -> list[list[SynthQuestion]]:
    """Every question of a type this scene answers, in groups drawn uniformly (then uniformly inside a group)."""
    objects = scene["objects"]
    shapes = Counter(o["shape"] for o in objects)
    colors = Counter(o["color"] for o in objects)

    def q(text: str, answer: Any, target: int | None) -> SynthQuestion:
        return SynthQuestion(question_type, text, str(answer), {"target": target})

    if question_type == "color":
        return [[q(f"What color is the {o['shape']}?", o["color"], i)
                 for i, o in enumerate(objects) if shapes[o["shape"]] == 1]]
    if question_type == "shape":
        return [[q(f"What shape is the {o['color']} object?", o["shape"], i)
                 for i, o in enumerate(objects) if colors[o["color"]] == 1]]
    if question_type == "count":
        return [[q("How many objects are there?", len(objects), None)],
                [q(f"How many {c} objects are there?", colors[c], None) for c in spec.colors],
                [q(f"How many {PLURAL.get(s, s + 's')} are there?", shapes[s], None) for s in spec.shapes]]
    if question_type == "position":
        return [[q(f"Where is the {name}?", o["position"], i)
                 for i, o in enumerate(objects) if (name := describe(objects, i))]]
    raise AssertionError(question_type)


def ask(scene: dict[str, Any], types: Sequence[str], spec: ShapesSpec,
        rng: random.Random) -> list[SynthQuestion] | None:
    """One distinct question per listed type, or None if this scene cannot answer them all."""
    asked: list[SynthQuestion] = []
    for t in types:
        texts = {x.question for x in asked}
        groups = [[x for x in group if x.question not in texts] for group in candidates(t, scene, spec)]
        groups = [g for g in groups if g]
        if not groups:
            return None
        asked.append(rng.choice(rng.choice(groups)))
    return asked


# --------------------------------------------------------------------------- the builders


def _names(value: str | Sequence[str], known: Sequence[str], flag: str) -> tuple[str, ...]:
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    bad = [n for n in names if n not in known]
    if bad or len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"synth: {flag} {','.join(names)}: give at least two distinct names of "
                          f"{', '.join(known)}")
    return tuple(names)


def _range(value: int | str | Sequence[int], flag: str) -> tuple[int, int]:
    try:
        if isinstance(value, int):
            lo = hi = value
        elif isinstance(value, str):
            lo, _, hi = value.partition("-")
            lo, hi = int(lo), int(hi or lo)
        else:
            lo, hi = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"synth: {flag} {value!r}: expected K or MIN-MAX, e.g. 3 or 1-3") from None
    if not 1 <= lo <= hi:
        raise ConfigError(f"synth: {flag} {value!r}: expected 1 <= MIN <= MAX")
    return lo, hi


def _spec(task: str, image_size: int, grid: int, objects, colors, shapes, distinct: bool) -> ShapesSpec:
    if grid not in POSITIONS:
        raise ConfigError(f"synth {task}: --grid must be one of {', '.join(map(str, POSITIONS))}, got {grid!r}")
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 12 * grid:
        raise ConfigError(f"synth {task}: --image-size must be at least {12 * grid} px for a {grid}x{grid} grid, "
                          f"got {image_size!r}")
    lo, hi = _range(objects, "--objects")
    spec = ShapesSpec(image_size, grid, lo, hi, _names(colors, list(COLORS), "--colors"),
                      _names(shapes, SHAPES, "--shapes"), distinct)
    if hi > grid * grid:
        raise ConfigError(f"synth {task}: --objects {objects}: at most {grid * grid} objects fit a {grid}x{grid} grid")
    if distinct and (lo < 2 or hi > min(len(spec.colors), len(spec.shapes))):
        raise ConfigError(f"synth {task}: --objects {objects}: each image needs 2 to "
                          f"{min(len(spec.colors), len(spec.shapes))} objects (one per distinct colour and shape)")
    return spec


def _objects_text(spec: ShapesSpec) -> str:
    return str(spec.min_objects) if spec.min_objects == spec.max_objects else f"{spec.min_objects}-{spec.max_objects}"


def _source(task: str, spec: ShapesSpec, types: tuple[str, ...], description: str) -> SynthSource:
    def draw(rng: random.Random, wanted: Sequence[str]) -> SynthItem:
        for _ in range(MAX_DRAWS):
            scene = spec.scene(rng)
            questions = ask(scene, wanted, spec, rng)
            if questions is not None:
                image = render(scene)
                return SynthItem(image, pixel_key(image), scene, questions)
        raise ConfigError(f"synth {task}: no scene answers {len(wanted)} distinct questions of types "
                          f"{', '.join(wanted)}; ask fewer questions per item or allow more objects")

    answer_sets = {
        "color": list(spec.colors), "shape": list(spec.shapes),
        "count": [str(k) for k in range(spec.max_objects + 1)],
        "position": list(POSITIONS[spec.grid]),
    }
    objects = _objects_text(spec)
    return SynthSource(
        task=task, modality="image", question_types=types,
        answer_sets={t: answer_sets[t] for t in types}, templates={t: TEMPLATES[t] for t in types},
        parameters={"image_size": spec.image_size, "grid": spec.grid, "objects": objects,
                    "colors": ",".join(spec.colors), "shapes": ",".join(spec.shapes)},
        description=description, draw=draw,
    )


def build_shapes(*, image_size: int = 64, grid: int = 3, objects: int | str = "1-3",
                 colors: str | Sequence[str] = "red,green,blue,yellow",
                 shapes: str | Sequence[str] = "circle,square,triangle") -> SynthSource:
    """``shapes``: colour, shape, count and position questions about 1-3 coloured shapes."""
    spec = _spec("shapes", image_size, grid, objects, colors, shapes, distinct=False)
    description = (
        f"Each image is a {spec.image_size}x{spec.image_size} PNG with {spec.min_objects} to {spec.max_objects} "
        f"objects ({', '.join(spec.shapes)}; {', '.join(spec.colors)}; colours and shapes may repeat) in distinct "
        f"cells of a {spec.grid}x{spec.grid} grid on a plain grey background, each with a random size and a small "
        "random offset inside its cell. A question asks for an object's colour (naming it by its shape, unique in "
        "the image), its shape (naming it by its unique colour), a count (all objects, those of a colour, those of "
        "a shape), or its position (its grid cell, naming it by its shortest unique description). Answers are one "
        "word or digit from a closed set. Question types take turns, so each has about the same number of rows.")
    return _source("shapes", spec, ("color", "shape", "count", "position"), description)


def build_shapes_pick(*, image_size: int = 64, grid: int = 3, objects: int | str = 4,
                      colors: str | Sequence[str] = "red,green,blue,yellow",
                      shapes: str | Sequence[str] = "circle,square,triangle,cross") -> SynthSource:
    """``shapes-pick``: the question picks one of several objects; its answer depends on the question."""
    spec = _spec("shapes-pick", image_size, grid, objects, colors, shapes, distinct=True)
    k = _objects_text(spec)
    full = spec.min_objects == spec.max_objects == len(spec.colors) == len(spec.shapes)
    description = (
        f"The instruction-aware ablation. Each image is a {spec.image_size}x{spec.image_size} PNG with {k} objects "
        f"of distinct colours ({', '.join(spec.colors)}) and distinct shapes ({', '.join(spec.shapes)}) in "
        f"distinct cells of a {spec.grid}x{spec.grid} grid on a plain grey background. The question picks one "
        "object, by its shape (\"What color is the triangle?\") or by its colour (\"What shape is the blue "
        "object?\"), and asks for its other attribute, so the answer depends on the question as much as on the "
        "image: the question alone says nothing about which colour goes with which shape, and the image alone "
        f"does not say which of its {k} objects is asked about (a model that ignores the question is right about "
        f"1 time in {spec.max_objects} at best). "
        + ("Here every image shows every colour and every shape exactly once, so both halves alone stay at "
           f"chance (1/{spec.max_objects}); only reading the question and the image together beats it. "
           if full else
           "With fewer objects than colours or shapes, the image alone narrows the answer to its objects' "
           "attributes (1/K rather than chance). ")
        + "Compare a connector that reads the instruction (e.g. a Q-Former given the question) with one that "
          "does not; `--questions-per-item` asks several questions (different answers) about the same image.")
    return _source("shapes-pick", spec, ("color", "shape"), description)
