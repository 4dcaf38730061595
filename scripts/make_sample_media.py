"""Write datasets/mmtune-video-samples/: short real clips (scikit-image photos with camera pans and zooms), synthesized
sounds, and their annotations in four published layouts (VideoChat, WebVid-style captions, AudioCaps/Clotho-style
captions, LLaVA with ``video`` / ``audio`` fields).

    .venv/bin/python scripts/make_sample_media.py [--out datasets/mmtune-video-samples]

Deterministic and offline: the photos ship with scikit-image (``skimage.data``), the sounds are computed, the noise
is seeded; the same PyAV / x264 build writes the same bytes. Every clip is 128x128 px, 16 frames at 8 fps (2 s),
H.264 yuv420p in mp4; two carry an AAC mono 16 kHz sound track. Every sound is a 2 s, 16 kHz mono 16-bit WAV.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mmtune.datagen.synth.media import SAMPLE_RATE, mp4_bytes, to_pcm16, wav_bytes
from mmtune.datagen.synth.tones import envelope, sweep, tone

SIZE, FRAMES, FPS, SECONDS = 128, 16, 8, 2.0
CRF = 26
OUT = Path(__file__).resolve().parents[1] / "datasets" / "mmtune-video-samples"


# --------------------------------------------------------------------------- sounds


def chirp() -> np.ndarray:
    return sweep(200.0, 2000.0, SECONDS, 0.5)


def chord() -> np.ndarray:
    return sum(tone(f, SECONDS, 0.2) for f in (261.63, 329.63, 392.00))  # C major: C4, E4, G4


def beeps() -> np.ndarray:
    out = np.zeros(int(SECONDS * SAMPLE_RATE))
    for k in range(4):  # four 880 Hz beeps, 0.1 s long, every 0.5 s
        start = int((0.25 + 0.5 * k) * SAMPLE_RATE)
        wave = tone(880.0, 0.1, 0.5)
        out[start:start + len(wave)] = wave
    return out


def noise_burst() -> np.ndarray:
    out = np.zeros(int(SECONDS * SAMPLE_RATE))
    n = int(0.5 * SAMPLE_RATE)
    burst = np.random.default_rng(0).uniform(-1, 1, n) * 0.4 * envelope(n)
    start = int(0.75 * SAMPLE_RATE)
    out[start:start + n] = burst
    return out


SOUNDS = {
    "chirp": (chirp, "A pure tone sweeps smoothly upward in pitch, from low to high.",
              [("Is the pitch rising or falling?", "Rising: the tone sweeps from about 200 Hz up to 2 kHz.")]),
    "chord": (chord, "A steady major chord of three sustained tones.",
              [("Describe the sound.", "A steady C major chord (C, E and G) held for two seconds.")]),
    "beeps": (beeps, "Four short high beeps at an even pace.",
              [("How many beeps are there?", "Four.")]),
    "noise_burst": (noise_burst, "A short burst of hissing white noise in the middle of silence.",
                    [("Is the sound a tone or noise?", "Noise: a half-second burst of white noise.")]),
}


# --------------------------------------------------------------------------- clips


def camera(image: np.ndarray, move: str) -> np.ndarray:
    """``[FRAMES, SIZE, SIZE, 3]``: a square window over the photo that pans or zooms, resized to SIZE."""
    h, w = image.shape[:2]
    side = min(h, w)
    photo = Image.fromarray(image)
    frames = []
    for k in range(FRAMES):
        u = k / (FRAMES - 1)
        if move in ("zoom in", "zoom out"):
            z = u if move == "zoom in" else 1 - u
            crop = side * (1 - 0.5 * z)  # the whole square down to its middle half
            cx, cy = w / 2, h / 2
        else:
            crop = side * 0.7
            span_x, span_y = w - crop, h - crop
            cx = crop / 2 + span_x * {"pan right": u, "pan left": 1 - u}.get(move, 0.5)
            cy = crop / 2 + span_y * {"pan down": u, "pan up": 1 - u}.get(move, 0.5)
        box = (cx - crop / 2, cy - crop / 2, cx + crop / 2, cy + crop / 2)
        frames.append(np.asarray(photo.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)))
    return np.stack(frames)


CLIPS = {
    # name: (skimage.data function, camera move, sound, what it shows, caption)
    "astronaut_zoom_in": ("astronaut", "zoom in", None, "an astronaut in an orange spacesuit",
                          "The camera slowly zooms in on a smiling astronaut in an orange spacesuit."),
    "coffee_pan_right": ("coffee", "pan right", "chirp", "a cup of coffee on a saucer",
                         "The camera pans right across a cup of coffee on a saucer while a rising tone plays."),
    "chelsea_zoom_out": ("chelsea", "zoom out", None, "a tabby cat",
                         "The camera zooms out from the face of a tabby cat."),
    "rocket_pan_left": ("rocket", "pan left", "chord", "a rocket on a launch pad",
                        "The camera pans left across a rocket on its launch pad while a steady chord sounds."),
    "hubble_pan_down": ("hubble_deep_field", "pan down", None, "galaxies in a deep-space telescope image",
                        "The camera pans down across a field of distant galaxies."),
}
MOVE_ANSWER = {"zoom in": "It zooms in.", "zoom out": "It zooms out.", "pan right": "It pans to the right.",
               "pan left": "It pans to the left.", "pan down": "It pans down."}


def main(out: Path) -> None:
    import skimage.data

    for sub in ("clips", "sounds"):  # the folder's README.md is written by hand and kept
        shutil.rmtree(out / sub, ignore_errors=True)
        (out / sub).mkdir(parents=True)
    pcm = {name: to_pcm16(fn()) for name, (fn, _, _) in SOUNDS.items()}
    for name, data in pcm.items():
        (out / "sounds" / f"{name}.wav").write_bytes(wav_bytes(data))
    for name, (photo, move, sound, _, _) in CLIPS.items():
        frames = camera(getattr(skimage.data, photo)(), move)
        (out / "clips" / f"{name}.mp4").write_bytes(mp4_bytes(frames, FPS, pcm.get(sound), crf=CRF))

    videochat, webvid, llava = [], [], []
    for name, (photo, move, sound, what, caption) in CLIPS.items():
        path = f"clips/{name}.mp4"
        qa = [{"q": "What is shown in the video?", "a": f"{what[0].upper()}{what[1:]}."},
              {"q": "How does the camera move?", "a": MOVE_ANSWER[move]}]
        if sound:
            qa.append({"q": "What can be heard?", "a": SOUNDS[sound][1]})
        videochat.append({"video": path, "QA": qa})
        webvid.append({"video": path, "caption": caption, "videoid": name, "name": caption, "page_dir": "samples",
                       "duration": "PT00H00M02S"})
        conversations = []
        for turn in qa:
            conversations += [{"from": "human", "value": turn["q"]}, {"from": "gpt", "value": turn["a"]}]
        conversations[0]["value"] = "<video>\n" + conversations[0]["value"]
        llava.append({"id": f"video-{name}", "video": path, "conversations": conversations})
    for name, (_, caption, qa) in SOUNDS.items():
        (q, a), = qa
        llava.append({"id": f"audio-{name}", "audio": f"sounds/{name}.wav",
                      "conversations": [{"from": "human", "value": f"<audio>\n{q}"}, {"from": "gpt", "value": a}]})
    audio = [{"audio": f"sounds/{name}.wav", "caption": caption, "file_name": f"{name}.wav"}
             for name, (_, caption, _) in SOUNDS.items()]

    (out / "videochat.json").write_text(json.dumps(videochat, indent=1) + "\n")
    (out / "llava_video.json").write_text(json.dumps(llava, indent=1) + "\n")
    (out / "video_captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in webvid))
    (out / "audio_captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in audio))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (its clips/, sounds/ and annotation "
                                                               "files are replaced; README.md is kept)")
    main(parser.parse_args().out)
