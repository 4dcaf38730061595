"""Short synthetic clips and one-word questions about what happens in them over time.

Three tasks, every clip an H.264 mp4 (``<video>`` rows, field ``video``):

- ``motion``: one coloured shape moves in a straight line across the frames; which way (left/right/up/down)?
- ``event-order``: a red square and a blue circle each flash once, at different times; which flashes first?
- ``av-sync``: a ball falls, bounces off the floor and rises while a short beep plays (the clip's own AAC sound
  track: one ``<video>`` item whose sound a model reads from the file, e.g. ``use_audio_in_video``); does the beep
  sound when the ball bounces (yes/no)?

Answers are dealt balanced by the shared machinery (chance 1/4 for motion, 1/2 for the others). A scene lists the
objects' per-frame positions (``path``, pixels) or flash frames and, for ``av-sync``, the bounce frame and the beep
onset in seconds; the clip is drawn from it alone (shapes as in :mod:`.shapes`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmtune.datagen.synth.common import (
    BLANK_GREY,
    SynthItem,
    SynthQuestion,
    SynthSource,
)
from mmtune.datagen.synth.media import SAMPLE_RATE, Clip
from mmtune.datagen.synth.shapes import render
from mmtune.datagen.synth.tones import _one_question_per_type, check_number, tone
from mmtune.errors import ConfigError

BACKGROUND = BLANK_GREY
FLOOR = (60, 60, 60)
MOTION_SHAPES = ("circle", "square", "triangle")
MOTION_COLORS = ("red", "green", "blue", "yellow")
DIRECTIONS = ["left", "right", "up", "down"]
EVENT_OBJECTS = (("red", "square"), ("blue", "circle"))
BEEP_S = 0.1
TEMPLATES: dict[str, list[str]] = {
    "direction": ["Which way does the {shape} move?", "In which direction does the {color} {shape} move?",
                  "Where is the object moving: left, right, up or down?"],
    "first": ["Which flashes first, the {a} or the {b}?", "Which appears first: the {a} or the {b}?",
              "Which lights up first, the {a} or the {b}?"],
    "sync": ["Does the beep sound when the ball bounces?", "Is the beep in sync with the bounce?",
             "Does the sound happen when the ball hits the floor?"],
}


def check_clip_options(task: str, frame_size: int, frames: int, fps: int, min_frames: int) -> None:
    check_number(task, "--frame-size", frame_size, 32, 256, integer=True)
    if frame_size % 32:
        # decord 0.6 misreads some other widths (16, 24, 48, 72 px: 4 channels or a size error)
        raise ConfigError(f"synth {task}: --frame-size must be a multiple of 32 (32, 64, 96, ...), got {frame_size}")
    check_number(task, "--frames", frames, min_frames, 64, integer=True)
    check_number(task, "--fps", fps, 1, 30, integer=True)


def draw_frames(size: int, per_frame: Sequence[Sequence[dict]], floor: bool = False) -> np.ndarray:
    """``[T, size, size, 3]`` uint8: frame k shows the objects ``per_frame[k]`` (shapes' scene objects)."""
    out = np.empty((len(per_frame), size, size, 3), np.uint8)
    for k, objects in enumerate(per_frame):
        out[k] = np.asarray(render({"size": size, "background": list(BACKGROUND), "objects": list(objects)}))
        if floor:
            out[k, size - 2:] = FLOOR
    return out


def _template(rng: random.Random, question_type: str, **names: str) -> str:
    return rng.choice(TEMPLATES[question_type]).format(**names)


# --------------------------------------------------------------------------- motion


def build_motion(*, frame_size: int = 32, frames: int = 8, fps: int = 8) -> SynthSource:
    """``motion``: a shape moves across the frames; which direction?"""
    check_clip_options("motion", frame_size, frames, fps, 4)
    size = frame_size
    r_lo, r_hi = max(3, size // 10), max(3, size // 7)

    def draw(rng: random.Random, wanted: Sequence[str], answers: Sequence[str]) -> SynthItem:
        _one_question_per_type("motion", wanted)
        direction = answers[0]
        shape, color, radius = rng.choice(MOTION_SHAPES), rng.choice(MOTION_COLORS), rng.randint(r_lo, r_hi)
        lo, hi = radius + 1, size - radius - 2  # centre range: the whole shape stays in the frame
        travel = rng.randint(size // 4, hi - lo)
        across = rng.randint(lo, hi)
        start = rng.randint(lo, hi - travel)
        along = [start + round(k * travel / (frames - 1)) for k in range(frames)]
        if direction in ("left", "up"):
            along = [lo + hi - a for a in along]
        path = [[a, across] if direction in ("left", "right") else [across, a] for a in along]
        objects = [[{"shape": shape, "color": color, "x": x, "y": y, "radius": radius}] for x, y in path]
        clip = Clip(draw_frames(size, objects), fps)
        scene = {"size": size, "frames": frames, "fps": fps, "background": list(BACKGROUND), "shape": shape,
                 "color": color, "radius": radius, "direction": direction, "path": path}
        text = _template(rng, "direction", shape=shape, color=color)
        return SynthItem(clip, clip.key(), scene, [SynthQuestion("direction", text, direction)])

    description = (
        f"Each clip is a {size}x{size} px, {frames}-frame H.264 mp4 at {fps} fps (no sound): one shape "
        f"({', '.join(MOTION_SHAPES)}; {', '.join(MOTION_COLORS)}) moves in a straight line at a steady speed "
        "(a quarter to nearly all of the frame over the clip) on a plain grey background, left, right, up or down. "
        "The question asks which way it moves (a few phrasings drawn per row); the answers are balanced "
        "(a quarter each).")
    return SynthSource(task="motion", modality="video", question_types=("direction",),
                       answer_sets={"direction": list(DIRECTIONS)}, templates={"direction": TEMPLATES["direction"]},
                       parameters={"frame_size": size, "frames": frames, "fps": fps}, description=description,
                       draw=draw, balanced=True)


# --------------------------------------------------------------------------- event order


def build_event_order(*, frame_size: int = 32, frames: int = 12, fps: int = 8) -> SynthSource:
    """``event-order``: a red square and a blue circle flash at different times; which flashes first?"""
    check_clip_options("event-order", frame_size, frames, fps, 6)
    size = frame_size
    flash = max(1, frames // 6)
    radius = max(3, size // 8)
    names = [f"{c} {s}" for c, s in EVENT_OBJECTS]

    def draw(rng: random.Random, wanted: Sequence[str], answers: Sequence[str]) -> SynthItem:
        _one_question_per_type("event-order", wanted)
        first = next(i for i, (_, s) in enumerate(EVENT_OBJECTS) if s == answers[0])
        # the two objects sit in two distinct quadrants, jittered
        cells = rng.sample(range(4), 2)
        half, slack = size / 2, max(0, int(size / 4 - radius - 1))
        where = [(int((c % 2 + 0.5) * half) + rng.randint(-slack, slack),
                  int((c // 2 + 0.5) * half) + rng.randint(-slack, slack)) for c in cells]
        pairs = [(a, b) for a in range(frames) for b in range(a + flash + 1, frames - flash + 1)]
        t_first, t_second = rng.choice(pairs)
        onsets = {first: t_first, 1 - first: t_second}
        objects = [{"shape": s, "color": c, "x": x, "y": y, "radius": radius, "onset": onsets[i],
                    "frames": list(range(onsets[i], onsets[i] + flash))}
                   for i, ((c, s), (x, y)) in enumerate(zip(EVENT_OBJECTS, where))]
        per_frame = [[o for o in objects if k in o["frames"]] for k in range(frames)]
        clip = Clip(draw_frames(size, per_frame), fps)
        scene = {"size": size, "frames": frames, "fps": fps, "background": list(BACKGROUND), "flash": flash,
                 "objects": objects}
        a, b = rng.sample(names, 2)
        text = _template(rng, "first", a=a, b=b)
        return SynthItem(clip, clip.key(), scene, [SynthQuestion("first", text, answers[0])])

    description = (
        f"Each clip is a {size}x{size} px, {frames}-frame H.264 mp4 at {fps} fps (no sound), plain grey: a "
        f"{names[0]} and a {names[1]}, in two random quadrants, each flash once for {flash} frame(s), one after the "
        "other (never together), at random times. The question asks which flashes first, naming both in a random "
        "order (a few phrasings drawn per row); the answer is the shape of the first (`square` or `circle`), "
        "balanced.")
    return SynthSource(task="event-order", modality="video", question_types=("first",),
                       answer_sets={"first": [s for _, s in EVENT_OBJECTS]}, templates={"first": TEMPLATES["first"]},
                       parameters={"frame_size": size, "frames": frames, "fps": fps}, description=description,
                       draw=draw, balanced=True)


# --------------------------------------------------------------------------- audio-visual sync


def render_beep(scene: dict[str, Any]) -> np.ndarray:
    samples = round(scene["frames"] / scene["fps"] * SAMPLE_RATE)
    out = np.zeros(samples)
    beep = scene["beep"]
    wave = tone(beep["hz"], beep["seconds"], beep["amplitude"])
    start = round(beep["onset"] * SAMPLE_RATE)
    out[start:start + len(wave)] = wave[:samples - start]
    return out


def build_av_sync(*, frame_size: int = 32, frames: int = 16, fps: int = 8) -> SynthSource:
    """``av-sync``: a ball bounces and a beep plays (the clip's sound track); is the beep on the bounce?"""
    check_clip_options("av-sync", frame_size, frames, fps, 10)
    size = frame_size
    min_offset = max(2, round(0.3 * fps))  # a "no" beep is at least ~0.3 s (and 2 frames) off the bounce
    floor_y = size - 3  # the lowest row a ball may cover (the floor is the last two rows)
    late = {b: [k for k in range(frames - 1) if abs(k - b) >= min_offset] for b in range(2, frames - 2)}
    bounces = [b for b, off in late.items() if off]  # bounce frames a "no" beep can miss
    if not bounces:
        raise ConfigError(f"synth av-sync: --frames {frames} at --fps {fps}: too short for a beep {min_offset} "
                          "frames off the bounce; give more frames")
    drift = (size // 4) / (frames - 1)

    def draw(rng: random.Random, wanted: Sequence[str], answers: Sequence[str]) -> SynthItem:
        _one_question_per_type("av-sync", wanted)
        radius = rng.randint(max(3, size // 10), max(3, size // 8))
        color = rng.choice(MOTION_COLORS)
        bounce = rng.choice(bounces)
        rest_y = floor_y - radius
        top = rng.randint(radius + 1 + size // 8, radius + 1 + size // 4)  # highest centre row, at the far end
        span = max(bounce, frames - 1 - bounce)  # frames from the bounce to the apex (at the far end)

        def height(k: int) -> int:  # free fall: fastest at the floor, at rest at the apex
            u = abs(k - bounce) / span
            return round((rest_y - top) * (2 * u - u * u))
        x0, vx = rng.randint(radius + 1 + size // 4, size - radius - 2 - size // 4), rng.choice([-1, 0, 1])
        path = [[x0 + round(vx * drift * (k - bounce)), rest_y - height(k)] for k in range(frames)]
        if answers[0] == "yes":
            beep_frame = bounce
        else:
            beep_frame = rng.choice(late[bounce])
        beep = {"onset": round(beep_frame / fps, 6), "frame": beep_frame, "seconds": BEEP_S,
                "hz": rng.randint(600, 1200), "amplitude": round(rng.uniform(0.4, 0.8), 2)}
        scene = {"size": size, "frames": frames, "fps": fps, "background": list(BACKGROUND), "floor": list(FLOOR),
                 "ball": {"color": color, "radius": radius}, "path": path, "bounce_frame": bounce,
                 "bounce_time": round(bounce / fps, 6), "beep": beep}
        objects = [[{"shape": "circle", "color": color, "x": x, "y": y, "radius": radius}] for x, y in path]
        clip = Clip(draw_frames(size, objects, floor=True), fps, render_beep(scene))
        text = _template(rng, "sync")
        return SynthItem(clip, clip.key(), scene, [SynthQuestion("sync", text, answers[0])])

    seconds = frames / fps
    description = (
        f"Each clip is a {size}x{size} px, {frames}-frame H.264 mp4 at {fps} fps ({seconds:g} s) with an AAC mono "
        "16 kHz sound track, in one `<video>` item: a ball falls onto the floor (the dark bottom rows), bounces "
        f"at a random frame and rises again; a {BEEP_S:g} s beep (600-1200 Hz) starts either at the bounce or at "
        f"least {min_offset} frames ({min_offset / fps:g} s) away from it. The question asks whether the beep "
        "sounds when the ball bounces (`yes` or `no`, balanced; a few phrasings drawn per row). A model answers "
        "it only by reading the frames and the sound together (e.g. `use_audio_in_video`). The blanked control "
        "blanks both streams; `--blank-only frames` or `--blank-only sound` blanks one.")
    return SynthSource(task="av-sync", modality="video+audio", question_types=("sync",),
                       answer_sets={"sync": ["yes", "no"]}, templates={"sync": TEMPLATES["sync"]},
                       parameters={"frame_size": size, "frames": frames, "fps": fps}, description=description,
                       draw=draw, balanced=True)
