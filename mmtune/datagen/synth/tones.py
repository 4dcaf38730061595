"""Synthetic sounds and one-word questions about them: ``pitch`` (a sweep up or down) and ``loudness`` (which of two
tones is louder).

Every sound is a 16 kHz mono 16-bit WAV (``audio`` media, ``<audio>`` rows). Answers are dealt balanced by the
shared machinery (:attr:`SynthSource.balanced`), so chance is 1/2 for both tasks; the question phrasing is drawn
per row and says nothing about the answer. A scene (frequencies, amplitudes, times in seconds) describes the sound
exactly: it is synthesized from the scene alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmtune.datagen.synth.common import SynthItem, SynthQuestion, SynthSource
from mmtune.datagen.synth.media import SAMPLE_RATE, Sound
from mmtune.errors import ConfigError

FADE_S = 0.01
"""Raised-cosine fade in and out of every tone (no clicks)."""
PITCH_TEMPLATES = ["Is the pitch rising or falling?", "Is this tone rising or falling in pitch?",
                   "Does the sweep go rising or falling?"]
LOUDNESS_TEMPLATES = ["Which tone is louder, the first or the second?", "Is the first or the second tone louder?",
                      "Which of the two tones is louder: first or second?"]


def check_number(task: str, flag: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"synth {task}: {flag} must be {kind} from {lo:g} to {hi:g}, got {value!r}")


def envelope(n: int) -> np.ndarray:
    """Ones with raised-cosine ramps of :data:`FADE_S` at both ends."""
    env = np.ones(n)
    k = min(n // 2, int(FADE_S * SAMPLE_RATE))
    if k:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        env[:k], env[n - k:] = ramp, ramp[::-1]
    return env


def tone(freq: float, seconds: float, amplitude: float) -> np.ndarray:
    n = round(seconds * SAMPLE_RATE)
    return amplitude * envelope(n) * np.sin(2 * np.pi * freq * np.arange(n) / SAMPLE_RATE)


def sweep(f0: float, f1: float, seconds: float, amplitude: float) -> np.ndarray:
    """An exponential sweep from ``f0`` to ``f1`` Hz."""
    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    k = math.log(f1 / f0) / seconds
    phase = 2 * np.pi * f0 * (np.expm1(k * t) / k)
    return amplitude * envelope(n) * np.sin(phase)


def render_pitch(scene: dict[str, Any]) -> np.ndarray:
    return sweep(scene["start_hz"], scene["end_hz"], scene["duration"], scene["amplitude"])


def render_loudness(scene: dict[str, Any]) -> np.ndarray:
    out = np.zeros(round(scene["duration"] * SAMPLE_RATE))
    for t in scene["tones"]:
        start = round(t["start"] * SAMPLE_RATE)
        wave = tone(t["hz"], t["seconds"], t["amplitude"])
        out[start:start + len(wave)] = wave
    return out


def _one_question_per_type(task: str, wanted: Sequence[str]) -> None:
    if len(set(wanted)) != len(wanted):
        raise ConfigError(f"synth {task}: one question of each type per item; --questions-per-item at most "
                          f"{len(set(wanted))}")


def build_pitch(*, duration: float = 2.0) -> SynthSource:
    """``pitch``: a tone sweeps up or down; is it rising or falling?"""
    check_number("pitch", "--duration", duration, 0.25, 10.0)
    duration = float(duration)

    def draw(rng: random.Random, wanted: Sequence[str], answers: Sequence[str]) -> SynthItem:
        _one_question_per_type("pitch", wanted)
        low = rng.randint(200, 800)
        high = round(low * rng.uniform(1.5, 3.0))
        rising = answers[0] == "rising"
        scene = {"duration": duration, "sample_rate": SAMPLE_RATE, "start_hz": low if rising else high,
                 "end_hz": high if rising else low, "amplitude": round(rng.uniform(0.3, 0.7), 2)}
        sound = Sound(render_pitch(scene))
        question = SynthQuestion("direction", rng.choice(PITCH_TEMPLATES), answers[0])
        return SynthItem(sound, sound.key(), scene, [question])

    description = (
        f"Each sound is a {duration:g} s, 16 kHz mono 16-bit WAV: one tone sweeping exponentially between two "
        "frequencies (the lower from 200 to 800 Hz, the higher 1.5 to 3 times it), up or down, at a random level, "
        "with 10 ms fades. The question asks whether the pitch is rising or falling, in one of a few phrasings "
        "drawn per row; the answers are balanced (half rising, half falling).")
    return SynthSource(task="pitch", modality="audio", question_types=("direction",),
                       answer_sets={"direction": ["rising", "falling"]}, templates={"direction": PITCH_TEMPLATES},
                       parameters={"duration": duration}, description=description, draw=draw, balanced=True)


def build_loudness(*, duration: float = 2.0) -> SynthSource:
    """``loudness``: two tones one after the other; is the first or the second louder?"""
    check_number("loudness", "--duration", duration, 0.5, 10.0)
    duration = float(duration)
    gap = round(min(0.2, duration / 10), 4)
    each = round((duration - gap) / 2, 4)

    def draw(rng: random.Random, wanted: Sequence[str], answers: Sequence[str]) -> SynthItem:
        _one_question_per_type("loudness", wanted)
        loud = round(rng.uniform(0.4, 0.8), 2)
        soft = round(loud / rng.uniform(2.0, 4.0), 3)  # 6 to 12 dB quieter
        levels = (loud, soft) if answers[0] == "first" else (soft, loud)
        tones = [{"start": start, "seconds": each, "hz": rng.randint(300, 1000), "amplitude": level}
                 for start, level in zip((0.0, round(each + gap, 4)), levels)]
        scene = {"duration": duration, "sample_rate": SAMPLE_RATE, "tones": tones}
        sound = Sound(render_loudness(scene))
        question = SynthQuestion("louder", rng.choice(LOUDNESS_TEMPLATES), answers[0])
        return SynthItem(sound, sound.key(), scene, [question])

    description = (
        f"Each sound is a {duration:g} s, 16 kHz mono 16-bit WAV: two steady tones of {each:g} s each, {gap:g} s "
        "apart, of independent random frequencies (300 to 1000 Hz); one is 6 to 12 dB quieter than the other. The "
        "question asks which is louder, the first or the second (a few phrasings drawn per row); the answers are "
        "balanced.")
    return SynthSource(task="loudness", modality="audio", question_types=("louder",),
                       answer_sets={"louder": ["first", "second"]}, templates={"louder": LOUDNESS_TEMPLATES},
                       parameters={"duration": duration}, description=description, draw=draw, balanced=True)
