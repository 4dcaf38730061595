"""Video and audio modalities: frame sampling, clip windows, audio clips, decoding problems, token counts,
companion items in tokenization, and collation (tiny files written by PyAV; no downloads)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import HF_CLIP_TINY, write_video, write_wav
from pydantic import ValidationError

from mmtune.data.formats import BadRow
from mmtune.data.media import media_items_of, media_slots
from mmtune.data.templates import Segment
from mmtune.data.tokenize import MediaSlot, encode_segments
from mmtune.modalities.audio import AUDIO, AudioFile, AudioTransform, clip_starts, cut_clips, decode_audio, probe_audio
from mmtune.modalities.base import FixedTokens, MediaInputs, MediaInputSpec, MediaItem, MediaProblem, load_item
from mmtune.modalities.image import ImageTransform
from mmtune.modalities.video import (
    VIDEO,
    FrameCounter,
    FrameSampling,
    VideoBranchConfig,
    VideoFile,
    VideoTransform,
    frame_indices,
    frame_window,
    probe_video,
)

FRAME = ImageTransform(32, (0.5,) * 3, (0.5,) * 3, "resize")
ORIGIN = "data.jsonl: row 3: field 'video'"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    video = write_video(d / "v.mp4", frames=16, fps=8)  # 2 s, no sound track
    data = write_video(d / "vt.mp4", frames=16, fps=8, tone=440).read_bytes()  # 2 s with a sound track
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "noise.mp4").write_bytes(os.urandom(4096))
    (d / "noise.wav").write_bytes(os.urandom(4096))
    (d / "empty.mp4").write_bytes(b"")
    wav = write_wav(d / "stereo.wav", 2.0, rate=44100, channels=2, amplitude=0.5)
    (d / "truncated.wav").write_bytes(wav.read_bytes()[:30])  # cut inside the header
    write_wav(d / "silent.wav", 1.0, amplitude=0.0)
    write_wav(d / "short.wav", 0.5)
    return {p.name: p for p in [video, *d.iterdir()]}


# --------------------------------------------------------------------------- frame sampling


def test_uniform_takes_floor_k_L_over_n_from_the_window_start():
    sampling = FrameSampling(mode="uniform", num_frames=8)
    assert frame_indices(sampling, 0, 100, 25.0) == [0, 12, 25, 37, 50, 62, 75, 87]  # Video-LLaMA's rule
    assert frame_indices(sampling, 10, 110, 25.0) == [10 + i for i in [0, 12, 25, 37, 50, 62, 75, 87]]
    assert frame_indices(FrameSampling(num_frames=3), 0, 3, 8.0) == [0, 1, 2]


def test_headtail_takes_half_from_each_half_sorted_distinct_and_seeded():
    sampling = FrameSampling(mode="headtail", num_frames=8)
    picks = frame_indices(sampling, 5, 45, 8.0, random.Random(3))
    head, tail = picks[:4], picks[4:]
    assert head == sorted(set(head)) and tail == sorted(set(tail))
    assert all(5 <= i < 25 for i in head) and all(25 <= i < 45 for i in tail)
    rng = random.Random(3)  # the rule, spelled out: Video-LLaMA's rnd.sample over each half
    assert picks == [5 + i for i in sorted(rng.sample(range(20), 4)) + sorted(rng.sample(range(20, 40), 4))]
    assert frame_indices(sampling, 5, 45, 8.0, random.Random(3)) == picks
    assert any(frame_indices(sampling, 5, 45, 8.0, random.Random(s)) != picks for s in range(4, 8))


@pytest.mark.parametrize("frames,fps,rate,expected", [
    (80, 8.0, 0.5, 5),   # 10 s at 0.5 frame / s
    (80, 8.0, 2.0, 8),   # 20 clamped to max_frames
    (8, 8.0, 0.5, 2),    # round(0.5) = 0, clamped to min_frames
    (24, 8.0, 1.0, 3),
])
def test_fps_count_is_clamped_round_seconds_times_fps_spread_uniformly(frames, fps, rate, expected):
    sampling = FrameSampling(mode="fps", fps=rate, min_frames=2, max_frames=8)
    picks = frame_indices(sampling, 4, 4 + frames, fps)
    assert picks == [4 + int(k * frames / expected) for k in range(expected)]


def test_clip_windows_start_and_end_in_seconds_inside_the_video():
    info = {"frames": 40, "fps": 8.0}
    assert frame_window(info, {}) == (0, 40)
    assert frame_window(info, {"start": 1.0, "end": 3.0}) == (8, 24)
    assert frame_window(info, {"start": 2.5, "end": 99}) == (20, 40)
    counter = FrameCounter(FrameSampling(mode="fps", fps=2.0, max_frames=32))
    item = MediaItem("video", "v.mp4", {"start": 1.0, "end": 4.0}, info=info)
    assert counter(item) == 6  # 3 s at 2 frames / s
    assert counter(MediaItem("video", "v.mp4", {}, info=info)) == 10


@pytest.mark.parametrize("options,message", [
    ({"mode": "headtail", "num_frames": 7}, "num_frames must be even"),
    ({"mode": "fps"}, "mode 'fps' needs fps"),
    ({"mode": "uniform", "fps": 2.0}, "fps is read by mode 'fps' only"),
    ({"mode": "fps", "fps": 1.0, "min_frames": 9, "max_frames": 4}, "min_frames 9 > max_frames 4"),
])
def test_frame_sampling_validation(options, message):
    with pytest.raises(ValidationError, match=message):
        FrameSampling(**options)


@pytest.mark.parametrize("frames,train", [
    ({"num_frames": 4}, {"mode": "headtail", "num_frames": 4}),
    ({"mode": "fps", "fps": 2.0, "max_frames": 8}, {"mode": "fps", "fps": 2.0, "max_frames": 8}),
])
def test_train_frames_may_change_which_frames_but_not_how_many(frames, train):
    assert VideoBranchConfig(frames=frames, train_frames=train).train_frames.mode == train.get("mode", "uniform")


@pytest.mark.parametrize("train,frames_said", [
    ({"mode": "headtail", "num_frames": 2}, "takes 2 frames per video but frames takes 4 frames"),
    ({"mode": "fps", "fps": 2.0}, "takes 2.0 frames per second (1-32) per video but frames takes 4 frames"),
])
def test_train_frames_taking_another_count_than_frames_is_one_line(train, frames_said):
    """Samples hold frames' count of positions (a per-frame connector's grow with the frames): training batches
    filling another count broke at step 1 (``MultimodalLM.input_embeddings``)."""
    from mmtune.config.loader import validate_recipe
    from mmtune.errors import ConfigError

    video = {"frames": {"mode": "uniform", "num_frames": 4}, "train_frames": train}
    with pytest.raises(ConfigError) as err:
        validate_recipe({"model": {"media": {"video": video}}})
    line = str(err.value)
    assert "\n" not in line and line.startswith("recipe: model.media.video.train_frames: ") and frames_said in line


def test_use_audio_in_video_without_an_audio_branch_is_one_line():
    from mmtune.config.loader import validate_recipe
    from mmtune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate_recipe({"model": {"media": {"video": {"use_audio_in_video": True}}}})
    assert str(err.value) == ("recipe: model.media: video.use_audio_in_video: needs model.media.audio (videos also "
                              "feed the audio branch, from the same file)")
    both = validate_recipe({"model": {"media": {"video": {"use_audio_in_video": True}, "audio": {}}}})
    assert VIDEO.companion(both.model.media.video) == "audio"
    assert VIDEO.companion(VideoBranchConfig()) is None


def test_a_too_short_video_names_the_counts():
    with pytest.raises(MediaProblem) as err:
        frame_indices(FrameSampling(num_frames=8), 0, 5, 8.0)
    assert err.value.reason == "video too short"
    assert "5 frame(s) in the clip window but 8 are asked for (uniform sampling" in err.value.detail
    with pytest.raises(MediaProblem, match="7 frame.s. in the clip window but 8 are asked for .headtail"):
        frame_indices(FrameSampling(mode="headtail", num_frames=8), 0, 7, 8.0)
    assert len(frame_indices(FrameSampling(mode="headtail", num_frames=8), 0, 8, 8.0)) == 8  # every frame
    with pytest.raises(MediaProblem) as err:
        frame_indices(FrameSampling(mode="fps", fps=8.0, min_frames=12), 0, 10, 8.0)
    assert err.value.reason == "video too short" and "12 are asked" in err.value.detail
    with pytest.raises(MediaProblem) as err:
        frame_indices(FrameSampling(num_frames=2), 10, 10, 8.0)
    assert err.value.reason == "empty video"


# --------------------------------------------------------------------------- audio clips


def test_even_clip_starts_never_reach_the_tail_and_random_ones_are_sorted_in_range():
    rate, clip = 16000, 32000
    total = 10 * rate
    assert clip_starts(total, clip, 3, "even") == [int(k * (total - clip) / 3) for k in range(3)]
    assert clip_starts(total, clip, 1, "even") == [0]
    assert clip_starts(clip // 2, clip, 4, "even") == [0, 0, 0, 0]  # shorter than a clip
    starts = clip_starts(total, clip, 8, "random", random.Random(1))
    assert starts == sorted(starts) and all(0 <= s <= total - clip for s in starts)
    assert starts == clip_starts(total, clip, 8, "random", random.Random(1))
    wave = np.ones(clip // 2, np.float32)
    pieces = cut_clips(wave, clip, [0, 0])
    assert [len(p) for p in pieces] == [clip, clip]
    assert pieces[0][: clip // 2].all() and not pieces[0][clip // 2:].any()


def test_decode_audio_resamples_to_mono_and_cuts_the_window(media):
    info = probe_audio(media["stereo.wav"])
    assert info == {"duration": 2.0, "sample_rate": 44100}
    wave = decode_audio(media["stereo.wav"], 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1 and abs(len(wave) - 32000) <= 16
    assert abs(float(np.abs(wave).max()) - 0.5) < 0.01  # two identical channels average to the same level
    assert abs(len(decode_audio(media["stereo.wav"], 16000, 0.5, 1.25)) - 12000) <= 1
    with pytest.raises(MediaProblem, match="no samples in the clip window"):
        decode_audio(media["stereo.wav"], 16000, 5.0, 6.0)
    track = decode_audio(media["vt.mp4"], 16000)  # a video's sound track
    assert abs(len(track) / 16000 - 2.0) < 0.15  # AAC adds its priming and padding frames


def _stack(clips):
    return torch.from_numpy(np.stack(clips))


def test_audio_transform_cuts_clips_and_refuses_silence_unless_allowed(media):
    transform = AudioTransform(16000, 3, 2.0, "even", _stack)
    assert tuple(transform(AudioFile(str(media["stereo.wav"]), {})).shape) == (3, 32000)
    short = transform(AudioFile(str(media["short.wav"]), {}))  # 0.5 s: 3 identical zero-padded clips
    assert torch.equal(short[0], short[2]) and not short[0, 8000:].any() and short[0, :8000].any()
    with pytest.raises(MediaProblem) as err:
        transform(AudioFile(str(media["silent.wav"]), {}))
    assert err.value.reason == "silent audio" and "silent.wav" in err.value.detail
    allowed = AudioTransform(16000, 3, 2.0, "even", _stack, allow_silence=True)
    assert not allowed(AudioFile(str(media["silent.wav"]), {})).any()


def test_a_file_without_a_sound_track_is_no_audio_stream(media):
    for call in (lambda: probe_audio(media["v.mp4"]),
                 lambda: AudioTransform(16000, 1, 2.0, "even", _stack)(AudioFile(str(media["v.mp4"]), {}))):
        with pytest.raises(MediaProblem) as err:
            call()
        assert err.value.reason == "no audio stream" and "v.mp4" in err.value.detail


# --------------------------------------------------------------------------- broken files


def _one_line_naming(exc: MediaProblem, name: str) -> bool:
    return name in exc.detail and "\n" not in exc.detail


@pytest.mark.parametrize("name", ["noise.mp4", "truncated.mp4", "empty.mp4"])
def test_a_corrupt_or_empty_video_is_one_line_naming_the_file(media, name):
    with pytest.raises(MediaProblem) as err:
        probe_video(media[name])
    assert err.value.reason == "unreadable video" and _one_line_naming(err.value, name)
    spec = MediaInputSpec(VIDEO, FixedTokens(1), VideoTransform(FrameSampling(num_frames=4), FRAME), None, 8)
    with pytest.raises(MediaProblem) as err:
        load_item(MediaItem("video", str(media[name]), {}, origin=ORIGIN), spec)
    assert err.value.detail.startswith(ORIGIN + ": ") and _one_line_naming(err.value, name)


@pytest.mark.parametrize("name", ["noise.wav", "truncated.wav", "truncated.mp4", "empty.mp4"])
def test_a_corrupt_audio_is_one_line_naming_the_file(media, name):
    with pytest.raises(MediaProblem) as err:
        probe_audio(media[name])
    assert err.value.reason == "unreadable audio" and _one_line_naming(err.value, name)
    spec = MediaInputSpec(AUDIO, FixedTokens(1), AudioTransform(16000, 1, 2.0, "even", _stack), None, 8)
    with pytest.raises(MediaProblem) as err:
        load_item(MediaItem("audio", str(media[name]), {}, origin=ORIGIN), spec)
    assert err.value.detail.startswith(ORIGIN + ": ") and _one_line_naming(err.value, name)


def test_video_transform_decodes_sampled_frames_or_names_the_file(media):
    path = str(media["v.mp4"])
    assert probe_video(media["v.mp4"]) == {"frames": 16, "fps": 8.0, "duration": 2.0}
    frames = VideoTransform(FrameSampling(num_frames=4), FRAME)(VideoFile(path, {}))
    assert tuple(frames.shape) == (4, 3, 32, 32)
    with pytest.raises(MediaProblem) as err:
        VideoTransform(FrameSampling(num_frames=32), FRAME)(VideoFile(path, {}))
    assert err.value.reason == "video too short" and _one_line_naming(err.value, "v.mp4")
    with pytest.raises(MediaProblem) as err:
        VideoTransform(FrameSampling(num_frames=2), FRAME)(VideoFile(path, {"start": 1.5, "end": 1.5}))
    assert err.value.reason == "empty video" and "v.mp4" in err.value.detail


def test_torchcodec_decodes_the_same_frames_or_says_in_one_line_why_it_cannot(media):
    """``decoder: torchcodec`` is optional: where it is not installed, or its native library lacks the system
    FFmpeg it needs, the item is one line naming the file; where it loads, it gives decord's frames."""
    import importlib.util

    path = str(media["v.mp4"])
    try:
        codec = VideoTransform(FrameSampling(num_frames=4), FRAME, "torchcodec")(VideoFile(path, {}))
    except MediaProblem as exc:
        assert exc.reason == "unreadable video" and "\n" not in exc.detail and path in exc.detail
        if importlib.util.find_spec("torchcodec") is None:
            assert "torchcodec is not installed" in exc.detail
        else:
            assert "libtorchcodec" in exc.detail
        return
    frames = VideoTransform(FrameSampling(num_frames=4), FRAME)(VideoFile(path, {}))
    assert codec.shape == frames.shape and (codec - frames).abs().max() < 0.1


# --------------------------------------------------------------------------- branches and token counts


def _video_branch(**over):
    from mmtune.models.multimodal.build import build_branch

    section = {"encoder": {"kind": "hf", "architecture": dict(HF_CLIP_TINY), "select_layer": -1}} | over
    return build_branch("video", VideoBranchConfig.model_validate(section), 24)


@pytest.fixture(scope="module")
def branches():
    torch.manual_seed(0)
    frame_wise = _video_branch(pieces={"pool": {"kind": "spatial_pool", "options": {"stride": 2}}},
                               connector={"kind": "mlp2x_gelu"}, frames={"mode": "fps", "fps": 2.0, "max_frames": 8})
    qformer = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
               "cross_attention_frequency": 1}
    video_qformer = _video_branch(
        connector={"kind": "qformer", "options": {"num_query_tokens": 6, "instruction_aware": False,
                                                  "qformer": qformer}},
        frames={"mode": "uniform", "num_frames": 4}, train_frames={"mode": "headtail", "num_frames": 4})
    return frame_wise, video_qformer


def test_frame_wise_counts_grow_with_frames_and_a_video_qformer_is_fixed(branches):
    frame_wise, video_qformer = branches
    assert frame_wise.frame_wise and frame_wise.num_tokens == 4  # 16 patches pooled 2 x 2
    assert not video_qformer.frame_wise and video_qformer.num_tokens == 6
    two_s = MediaItem("video", "a.mp4", {}, info={"frames": 16, "fps": 8.0})
    eight_s = MediaItem("video", "b.mp4", {}, info={"frames": 64, "fps": 8.0})
    count = frame_wise.token_count()
    assert (count(two_s), count(eight_s)) == (4 * 4, 8 * 4)  # 4 frames; 16 clamped to max_frames 8
    fixed = video_qformer.token_count()
    assert (fixed(two_s), fixed(eight_s)) == (6, 6)
    with pytest.raises(MediaProblem) as err:  # still checked when the count is fixed
        fixed(MediaItem("video", "c.mp4", {}, info={"frames": 3, "fps": 8.0}))
    assert err.value.reason == "video too short"
    rules = {count.rule, fixed.rule, video_qformer.token_count(train=True).rule}
    assert count.rule == "fps:2.0:1-8:x4" and fixed.rule == "uniform:4:fixed:6"
    assert len(rules) == 3  # cache keys change with the sampling


def test_item_tokens_and_forward_with_padded_lengths(branches):
    frame_wise, video_qformer = branches
    inputs = MediaInputs(torch.randn(2, 4, 3, 32, 32), lengths=torch.tensor([4, 2]))
    assert frame_wise.item_tokens(inputs).tolist() == [16, 8]
    assert video_qformer.item_tokens(inputs).tolist() == [6, 6]
    with torch.no_grad():
        assert tuple(frame_wise(inputs).shape) == (2, 16, 24)
        assert tuple(video_qformer(inputs).shape) == (2, 6, 24)


def test_collate_pads_to_the_longest_item_with_lengths():
    values, lengths = VIDEO.collate([torch.ones(3, 3, 4, 4), torch.ones(5, 3, 4, 4)])
    assert tuple(values.shape) == (2, 5, 3, 4, 4) and lengths.tolist() == [3, 5]
    assert not values[0, 3:].any() and values[0, :3].all()
    values, lengths = AUDIO.collate([torch.ones(2, 8), torch.ones(2, 8)])
    assert tuple(values.shape) == (2, 2, 8) and lengths.tolist() == [2, 2]


# --------------------------------------------------------------------------- companions in token sequences


class _Refuses:
    rule = "refuses"

    def __call__(self, item):
        raise MediaProblem("too quiet", "no clip loud enough")


def test_a_videos_sound_track_is_a_companion_item_after_it(media):
    specs = {"video": MediaInputSpec(VIDEO, FixedTokens(5), None, None, 8, companion="audio"),
             "audio": MediaInputSpec(AUDIO, FixedTokens(2), None, None, 8)}
    conv = [{"role": "user", "content": "<video> What happens?", "media": [
        {"modality": "video", "ref": "vt.mp4", "field": "video", "options": {"start": 0.5}}]},
        {"role": "assistant", "content": "A tone."}]
    items = media_items_of(conv, specs, root=media["vt.mp4"].parent, where="d.jsonl: row 1")
    assert [(i.modality, i.companion) for i in items] == [("video", False), ("audio", True)]
    assert items[1].path == items[0].path and items[1].options == {"start": 0.5}
    assert items[1].origin == "d.jsonl: row 1: field 'video' (its audio)"
    assert [i.field_name for i in items] == ["video", "video"]
    assert media_slots(items, specs) == [MediaSlot("<video>", -201, 5), MediaSlot("", -202, 2)]
    picky = {**specs, "audio": MediaInputSpec(AUDIO, _Refuses(), None, None, 8)}
    with pytest.raises(BadRow) as err:  # the companion's problem names the row's field, as its video's would
        media_slots(items, picky)
    assert (err.value.reason, err.value.field_name) == ("too quiet", "video")
    conv[0]["media"][0]["ref"] = "v.mp4"  # no sound track: the row is bad
    with pytest.raises(BadRow) as err:
        media_items_of(conv, specs, root=media["v.mp4"].parent, where="d.jsonl: row 1")
    assert err.value.reason == "no audio stream" and err.value.field_name == "video"


def test_turning_use_audio_in_video_on_or_off_tokenizes_again(media, tokenizer, tmp_path):
    """The companion adds items (and positions) to every sample: a cached tokenization without it is not reused."""
    import json

    from mmtune.config.schema import DataConfig
    from mmtune.data.pipeline import build_conversation_data

    turns = [{"from": "human", "value": "<video>\nWhat is it?"}, {"from": "gpt", "value": "A tone."}]
    rows = [{"id": str(i), "video": "vt.mp4", "conversations": turns} for i in range(3)]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    cfg = DataConfig(datasets=[{"path": str(tmp_path / "d.json"), "format": "llava",
                                "media_folder": str(media["vt.mp4"].parent)}], cache_dir=str(tmp_path / "cache"))

    def build(companion):
        specs = {"video": MediaInputSpec(VIDEO, FixedTokens(5), None, None, 8, companion=companion),
                 "audio": MediaInputSpec(AUDIO, FixedTokens(2), None, None, 8)}
        return build_conversation_data(tokenizer, cfg, seed=0, media=specs)

    plain, with_sound = build(None), build("audio")
    assert not with_sound.reports[0].from_cache
    assert (plain.reports[0].media, with_sound.reports[0].media) == ({"video": 3}, {"video": 3, "audio": 3})
    assert (with_sound.train[0][0] == -202).sum() == 2
    assert build("audio").reports[0].from_cache and build(None).reports[0].from_cache


def test_truncation_keeps_a_video_with_its_sound_or_cuts_before_both(tokenizer):
    slots = [MediaSlot("<video>", -201, 10), MediaSlot("", -202, 3), MediaSlot("<video>", -201, 10),
             MediaSlot("", -202, 3)]
    conv = [[Segment("Look: <video> and <video> now.", False), Segment("Two clips.", True)]]

    def encode(max_length):
        return encode_segments(tokenizer, conv, max_length=max_length, media=[slots], tags=["<video>", "<audio>"])[0]

    full = encode(1000)
    ids = full.input_ids.tolist()
    first = ids.index(-201)
    assert ids[first:first + 13] == [-201] * 10 + [-202] * 3  # the sound right after its video
    second = ids.index(-201, first + 13)
    assert ids[second:second + 13] == [-201] * 10 + [-202] * 3
    assert (full.media_kept, full.media_cut, full.truncated) == (4, 0, False)
    for limit in (second + 5, second + 11, second + 12):  # inside the second video or its sound
        cut = encode(limit)
        assert len(cut.input_ids) == second and (cut.media_kept, cut.media_cut) == (2, 2) and cut.truncated
    for limit in (first + 3, first + 12):
        cut = encode(limit)
        assert len(cut.input_ids) == first and (cut.media_kept, cut.media_cut) == (0, 4)
    exact = encode(second + 13)
    assert len(exact.input_ids) == second + 13 and (exact.media_kept, exact.media_cut) == (4, 0)


def test_pyav_reads_what_decord_cannot_and_agrees_with_it_where_both_can(tmp_path):
    """decord fails to copy out some frame widths (48 px); PyAV decodes them, and gives decord's frames elsewhere."""
    from mmtune.modalities.video import _PyAVReader, open_video

    odd = write_video(tmp_path / "w48.mp4", frames=8, size=48)
    frames = open_video(odd).get_batch([0, 5, 7])
    assert frames.shape == (3, 48, 48, 3)
    even = write_video(tmp_path / "w32.mp4", frames=8, size=32, seed=3)
    by_decord = open_video(even).get_batch([1, 6]).astype(int)
    by_pyav = _PyAVReader(str(even)).get_batch([1, 6]).astype(int)
    assert by_decord.shape == by_pyav.shape and np.abs(by_decord - by_pyav).max() <= 2


def test_a_sound_file_given_as_a_video_says_it_has_no_video_stream(tmp_path):
    from mmtune.modalities.video import probe_video

    with pytest.raises(MediaProblem) as err:
        probe_video(write_wav(tmp_path / "only.wav"))
    assert err.value.reason == "no video stream" and "only.wav" in err.value.detail


def test_data_inspect_shows_a_video_and_its_sound_track_as_two_runs(tokenizer):
    from mmtune.data.inspect import mark_trained
    from mmtune.modalities.audio import AUDIO_PLACEHOLDER_ID
    from mmtune.modalities.video import VIDEO_PLACEHOLDER_ID

    hello = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    ids = np.array([*hello, *[VIDEO_PLACEHOLDER_ID] * 3, *[AUDIO_PLACEHOLDER_ID] * 2, *hello])
    text = mark_trained(tokenizer, ids, np.zeros(len(ids), bool), color=False)
    assert text == "Hi<video x3><audio x2>Hi"


def test_spatial_pool_takes_a_grid_that_is_not_square():
    from mmtune.models.multimodal.pieces import SpatialPoolPiece

    piece = SpatialPoolPiece(dim=4, num_tokens=12 * 19, stride=4, grid=[12, 19])  # an AST clip's mel x time grid
    assert piece.num_output_tokens(12 * 19) == 3 * 5
    features = torch.zeros(2, 12, 19, 4)
    features[:, :4, :4] = 1.0  # low frequencies, first 4 time steps: the first pooled token only
    out = piece(features.reshape(2, 12 * 19, 4))
    assert out.shape == (2, 15, 4) and torch.allclose(out[:, 0], torch.ones(2, 4)) and out[:, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="12 x 18"):
        SpatialPoolPiece(dim=4, num_tokens=12 * 19, grid=[12, 18])
