"""``mmtune data synth`` clip and sound tasks: answers recomputed from the decoded media, balance, blank controls.

Each answer is checked against what the files hold (decoded by PyAV, decord and soundfile), not against the scene:
the motion direction from the centroid of non-grey pixels, rising/falling from the STFT peak, the louder tone from
the RMS of each half, the beep onset against the frame where the ball is lowest.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")

from mmtune.datagen.synth import SYNTH_TASKS, generate_synth, write_blank_copy
from mmtune.datagen.synth.media import SAMPLE_RATE, read_audio, read_frames
from mmtune.errors import ConfigError

N_TRAIN, N_HELD = 16, 8


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Every clip and sound task, small, with its blank control (av-sync also with one stream blanked each)."""
    root = tmp_path_factory.mktemp("synth-media")
    out = {}
    for task in ("motion", "event-order", "av-sync", "pitch", "loudness"):
        generate_synth(task, root / task, train=N_TRAIN, heldout=N_HELD, seed=1, progress=False,
                       blank=root / f"{task}-blank")
        out[task] = root / task
    for only in ("frames", "sound"):
        write_blank_copy(root / "av-sync", root / f"av-sync-{only}", only=only, progress=False)
    return out


def rows(folder: Path, split: str) -> list[dict]:
    return json.loads((folder / f"{split}.json").read_text())


def media_rows(folder: Path):
    summary = json.loads((folder / "synth.json").read_text())
    field, sub = ("audio", "audio") if summary["modality"] == "audio" else ("video", "videos")
    for split in ("train", "heldout"):
        for row in rows(folder, split):
            yield row, folder / sub / row[field]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def centroids(frames: np.ndarray) -> list[tuple[float, float] | None]:
    """(x, y) of the pixels clearly off the grey background, per frame (None: nothing there)."""
    off = np.abs(frames.astype(int) - 128).max(axis=-1) > 40
    out = []
    for mask in off:
        ys, xs = np.nonzero(mask)
        out.append((xs.mean(), ys.mean()) if len(xs) else None)
    return out


def peak_hz(samples: np.ndarray, start: int, size: int = 1024) -> float:
    window = samples[start:start + size] * np.hanning(size)
    return np.argmax(np.abs(np.fft.rfft(window))) * SAMPLE_RATE / size


# --------------------------------------------------------------------------- determinism, balance, rows


def test_same_seed_same_files_and_the_heldout_split_is_kept_out_of_train(tmp_path, made):
    for task in ("motion", "av-sync", "pitch"):
        again = tmp_path / task
        generate_synth(task, again, train=N_TRAIN, heldout=N_HELD, seed=1, progress=False)
        fresh, first = files(again), files(made[task])
        assert fresh.keys() == first.keys()  # synth.json and README also name the blank control: not compared
        assert all(fresh[k] == first[k] for k in fresh if k not in ("synth.json", "README.md"))
    other = tmp_path / "other"
    generate_synth("motion", other, train=N_TRAIN, heldout=N_HELD, seed=2, progress=False)
    assert files(other)["train.json"] != files(made["motion"])["train.json"]
    for task, folder in made.items():
        keys = {s: {json.dumps(r["scene"], sort_keys=True) for r in rows(folder, s)} for s in ("train", "heldout")}
        assert not keys["train"] & keys["heldout"], task


@pytest.mark.parametrize("task, field, tag, answers", [
    ("motion", "video", "<video>", {"left", "right", "up", "down"}),
    ("event-order", "video", "<video>", {"square", "circle"}),
    ("av-sync", "video", "<video>", {"yes", "no"}),
    ("pitch", "audio", "<audio>", {"rising", "falling"}),
    ("loudness", "audio", "<audio>", {"first", "second"}),
])
def test_rows_are_llava_with_balanced_answers_and_chance_one_over_k(made, task, field, tag, answers):
    folder = made[task]
    summary = json.loads((folder / "synth.json").read_text())
    for split, n in (("train", N_TRAIN), ("heldout", N_HELD)):
        split_rows = rows(folder, split)
        assert len(split_rows) == n
        counts = Counter(r["answer"] for r in split_rows)
        assert set(counts) == answers and len(set(counts.values())) == 1  # n is a multiple of k: equal shares
        for r in split_rows:
            assert r["conversations"][0]["value"] == f"{tag}\n{r['question']}"
            assert r["conversations"][1]["value"] == r["answer"] and "image" not in r
            assert r[field].startswith(f"{split}/")
        assert len({r["question"] for r in split_rows}) > 1  # phrasings drawn per row
    assert summary["chance"]["overall"] == pytest.approx(1 / len(answers))
    card = (folder / "train.yaml").read_text()
    assert f"media_folder: {'audio' if field == 'audio' else 'videos'}" in card and "format: llava" in card


# --------------------------------------------------------------------------- the files decode, answers are right


def test_clips_decode_with_decord_and_pyav(made):
    import decord

    for task, frames, audio in (("motion", 8, False), ("event-order", 12, False), ("av-sync", 16, True)):
        for row, path in list(media_rows(made[task]))[:4]:
            vr = decord.VideoReader(str(path))
            assert len(vr) == frames and vr.get_avg_fps() == pytest.approx(8.0)
            batch = vr.get_batch(list(range(len(vr)))).asnumpy()
            assert batch.shape == (frames, 32, 32, 3)
            decoded = read_frames(path)
            assert decoded.shape == batch.shape and np.abs(decoded.astype(int) - batch).max() <= 8
            if audio:
                sound = read_audio(path)
                assert len(sound) == 2 * SAMPLE_RATE


def test_sounds_are_16k_mono_pcm_wav_read_by_pyav_and_soundfile(made):
    import av
    import soundfile

    for task in ("pitch", "loudness"):
        for row, path in list(media_rows(made[task]))[:3]:
            info = soundfile.info(str(path))
            assert (info.samplerate, info.channels, info.subtype, info.frames) == (16000, 1, "PCM_16", 32000)
            with av.open(str(path)) as c:
                s = c.streams.audio[0]
                assert (s.rate, s.codec_context.layout.nb_channels, s.codec_context.name) == (16000, 1, "pcm_s16le")
            data, _ = soundfile.read(str(path), dtype="float32")
            assert np.abs(read_audio(path) - data).max() < 1e-3


def test_motion_answer_is_the_way_the_centroid_moves(made):
    for row, path in media_rows(made["motion"]):
        c = [p for p in centroids(read_frames(path)) if p is not None]
        assert len(c) == 8
        dx, dy = c[-1][0] - c[0][0], c[-1][1] - c[0][1]
        seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert seen == row["answer"] and max(abs(dx), abs(dy)) >= 6, (row["id"], dx, dy)


def test_event_order_answer_is_the_shape_that_shows_first(made):
    for row, path in media_rows(made["event-order"]):
        frames = read_frames(path).astype(int)
        red = ((frames[..., 0] > 170) & (frames[..., 2] < 90)).any(axis=(1, 2))  # the red square
        blue = ((frames[..., 2] > 170) & (frames[..., 0] < 90)).any(axis=(1, 2))  # the blue circle
        assert red.any() and blue.any() and not (red & blue).any()
        first = "square" if np.argmax(red) < np.argmax(blue) else "circle"
        assert first == row["answer"], row["id"]


def test_pitch_answer_is_the_trend_of_the_stft_peak(made):
    for row, path in media_rows(made["pitch"]):
        samples = read_audio(path)
        peaks = [peak_hz(samples, s) for s in range(1000, len(samples) - 2000, 4000)]
        trend = np.polyfit(np.arange(len(peaks)), peaks, 1)[0]
        assert ("rising" if trend > 0 else "falling") == row["answer"], row["id"]
        assert all(np.diff(peaks) > 0) or all(np.diff(peaks) < 0)


def test_loudness_answer_is_the_half_with_more_rms(made):
    for row, path in media_rows(made["loudness"]):
        samples = read_audio(path)
        half = len(samples) // 2
        first, second = (np.sqrt(np.mean(x ** 2)) for x in (samples[:half], samples[half:]))
        assert ("first" if first > second else "second") == row["answer"], row["id"]
        assert max(first, second) / min(first, second) > 1.8


def test_av_sync_answer_is_whether_the_beep_starts_at_the_bounce_frame(made):
    seen = Counter()
    for row, path in media_rows(made["av-sync"]):
        c = centroids(read_frames(path)[:, :-2])  # without the floor rows
        bounce = int(np.argmax([p[1] for p in c]))  # the lowest ball
        samples = read_audio(path)
        onset = np.nonzero(np.abs(samples) > 0.05)[0][0] / SAMPLE_RATE
        synced = abs(onset - bounce / 8) < 0.06
        assert ("yes" if synced else "no") == row["answer"], (row["id"], bounce, onset)
        if not synced:
            assert abs(onset - bounce / 8) >= 0.24
        seen[row["answer"]] += 1
    assert seen["yes"] == seen["no"]


# --------------------------------------------------------------------------- blank controls


def test_blank_clips_are_grey_and_blank_sounds_silent_of_the_same_length(made):
    import decord

    for task in ("motion", "event-order", "av-sync"):
        blank = made[task].parent / f"{task}-blank"
        assert (blank / "train.json").read_bytes() == (made[task] / "train.json").read_bytes()
        for row, path in list(media_rows(made[task]))[:3]:
            twin = blank / "videos" / row["video"]
            vr = decord.VideoReader(str(twin))
            assert len(vr) == len(decord.VideoReader(str(path))) and vr.get_avg_fps() == pytest.approx(8.0)
            assert np.abs(read_frames(twin).astype(int) - 128).max() <= 1
            if task == "av-sync":
                silent = read_audio(twin)
                assert len(silent) == len(read_audio(path)) and np.abs(silent).max() == 0
    for task in ("pitch", "loudness"):
        for row, path in list(media_rows(made[task]))[:3]:
            twin = made[task].parent / f"{task}-blank" / "audio" / row["audio"]
            assert twin.stat().st_size == path.stat().st_size
            assert not read_audio(twin).any()
    summary = json.loads((made["pitch"].parent / "pitch-blank" / "synth.json").read_text())
    assert summary["blank"] and "digital silence" in (made["pitch"].parent / "pitch-blank" / "README.md").read_text()


def test_av_sync_can_blank_one_stream_and_keep_the_other(made):
    root = made["av-sync"].parent
    for row, path in list(media_rows(made["av-sync"]))[:3]:
        frames, sound = read_frames(path), read_audio(path)
        no_frames = root / "av-sync-frames" / "videos" / row["video"]
        no_sound = root / "av-sync-sound" / "videos" / row["video"]
        assert np.abs(read_frames(no_frames).astype(int) - 128).max() <= 1
        assert np.array_equal(read_audio(no_frames), sound)
        assert np.array_equal(read_frames(no_sound), frames)
        assert len(read_audio(no_sound)) == len(sound) and not read_audio(no_sound).any()
    assert json.loads((root / "av-sync-sound" / "synth.json").read_text())["blank_only"] == "sound"


@pytest.mark.parametrize("task, kw, message", [
    ("motion", {"frame_size": 48}, "multiple of 32"),
    ("motion", {"frames": 2}, "--frames must be a whole number from 4"),
    ("av-sync", {"fps": 0}, "--fps"),
    ("pitch", {"frames": 8}, "no option --frames"),
    ("pitch", {"duration": 0.1}, "--duration"),
    ("motion", {"questions_per_item": 2}, "one question of each type"),
    ("motion", {"blank_only": "sound", "blank": "x"}, "one stream"),
    ("av-sync", {"blank_only": "sound"}, "needs --blank"),
])
def test_bad_options_are_one_line_errors(tmp_path, task, kw, message):
    with pytest.raises(ConfigError, match=message) as err:
        generate_synth(task, tmp_path / "out", train=4, heldout=4, progress=False,
                       **{k: (str(tmp_path / v) if k == "blank" else v) for k, v in kw.items()})
    assert "\n" not in str(err.value)


def test_media_tasks_are_registered():
    assert {"motion", "event-order", "av-sync", "pitch", "loudness"} <= set(SYNTH_TASKS)
