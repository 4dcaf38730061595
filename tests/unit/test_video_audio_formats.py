"""Video and audio data formats: LLaVA rows with a column per modality, VideoChat / Video-ChatGPT instruction
rows (``videochat``), video- and audio-caption pairs (``caption_pair``: WebVid, AudioCaps, Clotho), CSV input,
clip windows, the shipped cards and bad rows as one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_jsonl

from mmtune.config.loader import load_card
from mmtune.config.schema import DatasetSpec
from mmtune.data.formats import BadRow, Mapping, convert_llava, convert_videochat
from mmtune.data.instruction_templates import TEMPLATE_KEY, load_template_set
from mmtune.data.pipeline import SourceReport, conversations_of
from mmtune.data.sources import resolve_source
from mmtune.errors import ConfigError, DataError
from mmtune.modalities import MODALITIES

DATASETS = REPO / "datasets"
SAMPLES = DATASETS / "mmtune-video-samples"
EXAMPLES = DATASETS / "examples"
VIDEO, AUDIO, IMAGE = (MODALITIES[name].tag for name in ("video", "audio", "image"))
NEW_CARDS = ["webvid", "videochat-instruct", "video-chatgpt", "audiocaps", "clotho", "mmtune-videochat",
             "mmtune-video-captions", "mmtune-audio-captions", "mmtune-llava-video"]
SAMPLE_CARDS = [name for name in NEW_CARDS if name.startswith("mmtune-")]
EXAMPLE_OF = {"webvid": "webvid.csv", "videochat-instruct": "videochat-instruct.json",
              "video-chatgpt": "video-chatgpt.json", "audiocaps": "audiocaps.csv", "clotho": "clotho.csv"}


def convs_of(spec: DatasetSpec, on_bad: str = "error") -> tuple[list, SourceReport]:
    src = resolve_source(spec)
    report = SourceReport(src.name)
    return list(conversations_of(src, report, on_bad)), report


def card_at(tmp_path: Path, name: str, **changes) -> Path:
    """A shipped card with keys changed (e.g. ``path`` pointed at example rows)."""
    raw = yaml.safe_load((DATASETS / f"{name}.yaml").read_text(encoding="utf-8"))
    raw.update(changes)
    card = tmp_path / "cards" / f"{name}.yaml"
    card.parent.mkdir(exist_ok=True)
    card.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return card


def bad(convert, row: dict, mapping: Mapping) -> BadRow:
    with pytest.raises(BadRow) as exc:
        convert(row, mapping)
    assert "\n" not in exc.value.detail
    return exc.value


def turns(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


# --------------------------------------------------------------------------- llava: a column per modality

LLAVA = Mapping.for_format("llava", {}, {})


def test_llava_image_rows_are_unchanged():
    one = {"image": "a.jpg", "conversations": turns("  hi <image> there ", "y")}
    assert convert_llava(one, LLAVA) == [[
        {"role": "user", "content": f"{IMAGE}\nhi  there", "media": [{"modality": "image", "ref": "a.jpg", "field": "image"}]},
        {"role": "assistant", "content": "y"}]]
    two = {"image": ["a.jpg", "b.jpg"], "conversations": turns(f"{IMAGE} x", "y", f"z {IMAGE}", "w")}
    conv = convert_llava(two, LLAVA)[0]
    assert conv[0] == {"role": "user", "content": f"{IMAGE} x",
                       "media": [{"modality": "image", "ref": "a.jpg", "field": "image[0]"}]}
    assert conv[2]["media"] == [{"modality": "image", "ref": "b.jpg", "field": "image[1]"}]
    mismatch = bad(convert_llava, {"image": "a.jpg", "conversations": turns(f"{IMAGE}x", f"{IMAGE}y")}, LLAVA)
    assert (mismatch.reason, mismatch.field_name, mismatch.detail) == (
        "image tag count mismatch", "conversations", "2 <image> tag(s) in the conversation but 1 image(s) in 'image'")
    outside = bad(convert_llava, {"image": "a.jpg", "conversations": turns("x", f"{IMAGE}y")}, LLAVA)
    assert (outside.reason, outside.field_name, outside.detail) == (
        "image tag outside a user turn", "conversations[1]", "<image> in a assistant message; images belong to user turns")
    text_only = {"conversations": turns("hi", "hello")}
    assert convert_llava(text_only, LLAVA) == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]


def test_llava_video_and_audio_columns_give_their_items():
    video = {"id": "v1", "video": "clips/a.mp4", "conversations": turns(f"What happens? {VIDEO}", "A pan.")}
    assert convert_llava(video, LLAVA)[0][0] == {
        "role": "user", "content": f"{VIDEO}\nWhat happens?",
        "media": [{"modality": "video", "ref": "clips/a.mp4", "field": "video"}]}
    audio = {"audio": ["s/a.wav"], "conversations": turns(f"{AUDIO}\nWhat is it?", "A chirp.")}
    assert convert_llava(audio, LLAVA)[0][0]["media"] == [{"modality": "audio", "ref": "s/a.wav", "field": "audio[0]"}]
    # Several modalities: tags stay where they are, each turn's items in the order of its tags.
    mixed = {"image": "p.jpg", "video": ["v0.mp4", "v1.mp4"], "audio": "s.wav",
             "conversations": turns(f"{VIDEO}{AUDIO} and {IMAGE}?", "ok", f"Now {VIDEO}.", "fine")}
    conv = convert_llava(mixed, LLAVA)[0]
    assert conv[0]["content"] == f"{VIDEO}{AUDIO} and {IMAGE}?"
    assert [(e["modality"], e["ref"], e["field"]) for e in conv[0]["media"]] == [
        ("video", "v0.mp4", "video[0]"), ("audio", "s.wav", "audio"), ("image", "p.jpg", "image")]
    assert conv[2]["media"] == [{"modality": "video", "ref": "v1.mp4", "field": "video[1]"}]


def test_llava_media_pattern_names_files_by_id():
    mapping = Mapping.for_format("llava", {"video": "{id}.mp4"}, {})
    conv = convert_llava({"id": "v_abc", "conversations": turns(f"{VIDEO}\nQ?", "A.")}, mapping)[0]
    assert conv[0]["media"] == [{"modality": "video", "ref": "v_abc.mp4", "field": "id"}]
    with pytest.raises(ValueError, match="column 'video': malformed pattern"):
        Mapping.for_format("llava", {"video": "{id.mp4"}, {})


@pytest.mark.parametrize(("row", "reason", "field"), [
    ({"conversations": turns(f"{VIDEO}\nQ?", "A.")}, "video tag count mismatch", "conversations"),
    ({"video": ["a.mp4", "b.mp4"], "conversations": turns(f"{VIDEO}\nQ?", "A.")}, "video tag count mismatch",
     "conversations"),
    ({"audio": "a.wav", "conversations": turns("Q?", "A.")}, "audio tag count mismatch", "conversations"),
    ({"video": "a.mp4", "conversations": turns("Q?", f"{VIDEO} A.")}, "video tag outside a user turn",
     "conversations[1]"),
    ({"video": 7, "conversations": turns(f"{VIDEO}\nQ?", "A.")}, "wrong field type", "video"),
    ({"audio": ["a.wav", ""], "conversations": turns(f"{AUDIO}{AUDIO}", "A.")}, "wrong field type", "audio"),
])
def test_llava_bad_media_rows_name_the_field(row, reason, field):
    exc = bad(convert_llava, row, LLAVA)
    assert (exc.reason, exc.field_name) == (reason, field)


# --------------------------------------------------------------------------- videochat

VIDEOCHAT = Mapping.for_format("videochat", {}, {})


def test_videochat_qa_list_is_one_multi_turn_conversation():
    row = {"video": "clips/a.mp4", "QA": [{"q": " What is shown? ", "a": "A cat."}, {"q": "And then?", "a": "It sleeps."}]}
    assert convert_videochat(row, VIDEOCHAT) == [[
        {"role": "user", "content": f"{VIDEO}\nWhat is shown?",
         "media": [{"modality": "video", "ref": "clips/a.mp4", "field": "video"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "It sleeps."}]]


def test_videochat_instruction_is_the_system_message_and_the_clip_window_the_options():
    row = {"video": "v.mp4", "start": "1.5", "end": 4, "QA": [{"i": "Describe the video in detail.", "q": "", "a": "A pan."}]}
    conv = convert_videochat(row, VIDEOCHAT)[0]
    assert conv[0] == {"role": "system", "content": "Describe the video in detail."}
    assert conv[1] == {"role": "user", "content": VIDEO,
                       "media": [{"modality": "video", "ref": "v.mp4", "field": "video", "options": {"start": 1.5, "end": 4.0}}]}
    # a question that already holds the tag is kept; HH:MM:SS windows read as seconds; columns map
    mapping = Mapping.for_format("videochat", {"qa": "turns", "question": "human", "answer": "bot", "start": "from",
                                               "end": "to"}, {})
    row = {"video": "v.mp4", "from": "00:01:02.5", "turns": [{"human": f"Watch {VIDEO} please", "bot": "Done."}]}
    conv = convert_videochat(row, mapping)[0]
    assert conv[0]["content"] == f"Watch {VIDEO} please" and conv[0]["media"][0]["options"] == {"start": 62.5}


def test_video_chatgpt_rows_are_one_pair_with_the_video_named_by_id():
    mapping = Mapping.for_format("videochat", {"video": "{video_id}.mp4"}, {})
    row = {"video_id": "v_k_ZXmr8pmrs", "q": "What happens?", "a": "A man prepares a camera."}
    assert convert_videochat(row, mapping) == [[
        {"role": "user", "content": f"{VIDEO}\nWhat happens?",
         "media": [{"modality": "video", "ref": "v_k_ZXmr8pmrs.mp4", "field": "video_id"}]},
        {"role": "assistant", "content": "A man prepares a camera."}]]


@pytest.mark.parametrize(("row", "reason", "field"), [
    ({"QA": [{"q": "Q?", "a": "A."}]}, "missing field", "video"),
    ({"video": 3, "QA": [{"q": "Q?", "a": "A."}]}, "wrong field type", "video"),
    ({"video": "v.mp4"}, "missing field", "QA"),
    ({"video": "v.mp4", "QA": {"q": "Q?", "a": "A."}}, "wrong field type", "QA"),
    ({"video": "v.mp4", "QA": []}, "empty conversation", "QA"),
    ({"video": "v.mp4", "QA": ["Q?"]}, "wrong field type", "QA[0]"),
    ({"video": "v.mp4", "QA": [{"q": "Q?", "a": "A."}, {"q": "Q2?"}]}, "missing field", "QA[1].a"),
    ({"video": "v.mp4", "QA": [{"q": "Q?", "a": "A."}, {"q": " ", "a": "B."}]}, "missing field", "QA[1].q"),
    ({"video": "v.mp4", "QA": [{"q": "Q?", "a": 4}]}, "wrong field type", "QA[0].a"),
    ({"video": "v.mp4", "QA": [{"q": "Q?", "a": "A."}, {"q": f"{VIDEO} again?", "a": "B."}]},
     "video tag count mismatch", "QA[1].q"),
    ({"video": "v.mp4", "start": "soon", "QA": [{"q": "Q?", "a": "A."}]}, "wrong field type", "start"),
    ({"video": "v.mp4", "start": -1, "QA": [{"q": "Q?", "a": "A."}]}, "wrong field type", "start"),
    ({"video": "v.mp4", "start": 5, "end": 2, "QA": [{"q": "Q?", "a": "A."}]}, "empty clip window", "end"),
])
def test_videochat_bad_rows_name_the_field(row, reason, field):
    exc = bad(convert_videochat, row, VIDEOCHAT)
    assert (exc.reason, exc.field_name) == (reason, field)


def test_a_bad_videochat_row_is_one_line_naming_file_row_and_field_or_a_counted_skip(tmp_path):
    good = {"video": "v.mp4", "QA": [{"q": "Q?", "a": "A."}]}
    path = write_jsonl(tmp_path / "vc.jsonl", [good, {"video": "v.mp4", "QA": [{"q": "Q?"}]}, good])
    with pytest.raises(DataError) as exc:
        convs_of(DatasetSpec(path=str(path), format="videochat"))
    assert str(exc.value) == f"{path}:2: field 'QA[0].a': required field 'QA[0].a' is missing or empty"
    convs, report = convs_of(DatasetSpec(path=str(path), format="videochat"), "skip")
    assert len(convs) == 2 and report.skipped == {"missing field": 1}


# --------------------------------------------------------------------------- caption_pair, CSV


def test_caption_pair_draws_the_modalitys_template_set_and_keeps_the_clip_window(tmp_path):
    rows = [{"clip": "a.mp4", "caption": ["one", "two"], "t0": 1, "t1": 3}]
    spec = DatasetSpec(path=str(write_jsonl(tmp_path / "v.jsonl", rows)), format="caption_pair",
                       columns={"video": "clip", "start": "t0", "end": "t1"}, draw_seed=0)
    convs, _ = convs_of(spec)
    templates = load_template_set(DATASETS / "templates" / "video_caption.yaml", "caption_pair")
    assert resolve_source(spec).settings.templates == templates
    assert [c[1]["content"] for _, c in convs] == ["one", "two"]
    for _, (user, answer) in convs:
        index, _, text = user[TEMPLATE_KEY].partition(": ")
        assert templates[int(index)] == text and user["content"] == VIDEO + text
        assert user["media"] == [{"modality": "video", "ref": "a.mp4", "field": "clip", "options": {"start": 1.0, "end": 3.0}}]
        assert answer["references"] == ["one", "two"]
    audio = DatasetSpec(path=str(write_jsonl(tmp_path / "a.jsonl", [{"audio": "s.wav", "caption": "beep"}])),
                        format="caption_pair", columns={"audio": "audio"})
    assert resolve_source(audio).settings.templates == load_template_set(
        DATASETS / "templates" / "audio_caption.yaml", "caption_pair")
    (_, [user, _]), = convs_of(audio)[0]
    assert user["content"].startswith(AUDIO) and "options" not in user["media"][0]
    # an image caption_pair reads InstructBLIP's caption set; an explicit set or list still wins
    image = DatasetSpec(path=str(audio.path), format="caption_pair", columns={"image": "audio"})
    assert resolve_source(image).settings.templates == load_template_set(
        DATASETS / "templates" / "instructblip_caption.yaml", "caption")
    own = DatasetSpec(path=str(audio.path), format="caption_pair", columns={"audio": "audio"}, templates=["Listen."])
    assert resolve_source(own).settings.templates == ["Listen."]


def test_caption_pair_needs_exactly_one_media_column(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"audio": "s.wav", "caption": "beep"}])
    with pytest.raises(ConfigError, match="format 'caption_pair' reads the one media column its 'columns' name"):
        resolve_source(DatasetSpec(path=str(path), format="caption_pair"))
    with pytest.raises(ConfigError, match=r"it names \['video', 'audio'\]"):
        resolve_source(DatasetSpec(path=str(path), format="caption_pair", columns={"video": "v", "audio": "audio"}))


@pytest.mark.parametrize(("row", "reason", "field"), [
    ({"caption": "x"}, "missing field", "audio"),
    ({"audio": ["s.wav"], "caption": "x"}, "wrong field type", "audio"),
    ({"audio": "s.wav"}, "missing field", "caption"),
    ({"audio": "s.wav", "caption": [1]}, "wrong field type", "caption[0]"),
    ({"audio": "s.wav", "caption": "x", "start": "later"}, "wrong field type", "start"),
])
def test_caption_pair_bad_rows_are_one_line_naming_the_field(tmp_path, row, reason, field):
    good = {"audio": "s.wav", "caption": "beep"}
    path = write_jsonl(tmp_path / "a.jsonl", [good, row, good])
    spec = DatasetSpec(path=str(path), format="caption_pair", columns={"audio": "audio"})
    with pytest.raises(DataError) as exc:
        convs_of(spec)
    assert str(exc.value).startswith(f"{path}:2: field '{field}': ") and "\n" not in str(exc.value)
    assert exc.value.reason == reason
    convs, report = convs_of(spec, "skip")
    assert len(convs) == 2 and report.skipped == {reason: 1}


def test_csv_rows_are_located_by_line_and_empty_cells_are_absent(tmp_path):
    path = tmp_path / "webvid.csv"
    path.write_text('videoid,page_dir,name\n1,d0,"a dog\nruns"\n2,d0,\n3,d1,x,extra\n4,d1,a cat\n', encoding="utf-8")
    spec = DatasetSpec(path=str(path), format="caption_pair",
                       columns={"video": "{page_dir}/{videoid}.mp4", "captions": "name"})
    convs, report = convs_of(spec, "skip")
    assert [(where, c[0]["media"][0]["ref"], c[1]["content"]) for where, c in convs] == [
        (f"{path}:2", "d0/1.mp4", "a dog\nruns"), (f"{path}:6", "d1/4.mp4", "a cat")]
    assert report.skipped == {"missing field": 1, "malformed CSV": 1}
    assert report.examples == {"missing field": f"{path}:4", "malformed CSV": f"{path}:5"}


# --------------------------------------------------------------------------- cards


@pytest.mark.parametrize("name", NEW_CARDS)
def test_every_new_card_validates(name):
    card = load_card(DATASETS / f"{name}.yaml")
    assert card.description and card.license and card.format in ("caption_pair", "videochat", "llava")
    src = resolve_source(DatasetSpec(card=name))
    assert src.path is not None and src.settings.media_folder is not None
    if src.format == "caption_pair":
        assert src.settings.templates


def test_the_shipped_sample_cards_convert_with_their_media():
    from mmtune.data.media import checked_path

    expected = {"mmtune-videochat": (5, {"video"}), "mmtune-video-captions": (5, {"video"}),
                "mmtune-audio-captions": (4, {"audio"}), "mmtune-llava-video": (9, {"video", "audio"})}
    for name in SAMPLE_CARDS:
        convs, report = convs_of(DatasetSpec(card=name))
        assert report.skipped == {} and len(convs) == expected[name][0], name
        root = resolve_source(DatasetSpec(card=name)).media_root()
        seen = set()
        for _, conv in convs:
            entries = [e for msg in conv for e in msg.get("media", ())]
            assert len(entries) == 1 and conv[-1]["role"] == "assistant"
            seen.add(entries[0]["modality"])
            assert checked_path(entries[0], root)  # exists inside the folder, header readable
        assert seen == expected[name][1], name
    convs, _ = convs_of(DatasetSpec(card="mmtune-videochat"))
    assert convs[1][1][0]["content"] == f"{VIDEO}\nWhat is shown in the video?" and len(convs[1][1]) == 6


def test_the_real_world_cards_map_their_example_rows(tmp_path):
    for name, example in EXAMPLE_OF.items():
        card = card_at(tmp_path, name, path=str(EXAMPLES / example))
        convs, report = convs_of(DatasetSpec(card=str(card)))
        assert report.skipped == {} and report.rows >= 2, name
        for _, conv in convs:
            user = next(m for m in conv if m["role"] == "user")
            assert len(user["media"]) == 1 and user["content"].startswith(MODALITIES[user["media"][0]["modality"]].tag)
    webvid, _ = convs_of(DatasetSpec(card=str(card_at(tmp_path, "webvid", path=str(EXAMPLES / "webvid.csv")))))
    assert webvid[1][1][0]["media"] == [{"modality": "video", "ref": "clips/coffee_pan_right.mp4", "field": "page_dir"}]
    assert webvid[1][1][1]["content"] == "The camera pans right across a cup of coffee, on a saucer."
    audiocaps, _ = convs_of(DatasetSpec(card=str(card_at(tmp_path, "audiocaps", path=str(EXAMPLES / "audiocaps.csv")))))
    assert [c[0]["media"][0]["ref"] for _, c in audiocaps] == [
        "train/sampleYT001_130.flac", "train/sampleYT002_20.flac", "train/sampleYT002_20.flac"]
    clotho, _ = convs_of(DatasetSpec(card=str(card_at(tmp_path, "clotho", path=str(EXAMPLES / "clotho.csv")))))
    assert len(clotho) == 9  # five captions, then four (one cell empty)
    assert clotho[0][1][0]["media"][0]["ref"] == "development/Distorted AM Radio noise.wav"
    assert all(len(c[1]["references"]) == 5 for _, c in clotho[:5]) and len(clotho[5][1][1]["references"]) == 4
    chat, _ = convs_of(DatasetSpec(card=str(card_at(tmp_path, "videochat-instruct",
                                                     path=str(EXAMPLES / "videochat-instruct.json")))))
    assert chat[0][1][0] == {"role": "system", "content": "Describe the following video in detail."}
    assert chat[2][1][0]["media"][0]["options"] == {"start": 0.5, "end": 1.5}
    gpt, _ = convs_of(DatasetSpec(card=str(card_at(tmp_path, "video-chatgpt", path=str(EXAMPLES / "video-chatgpt.json")))))
    assert [c[0]["media"][0]["ref"] for _, c in gpt] == ["astronaut_zoom_in.mp4", "chelsea_zoom_out.mp4",
                                                        "hubble_pan_down.mp4"]


def test_the_new_template_sets_are_caption_sets_without_tags():
    for name in ("video_caption", "audio_caption"):
        raw = yaml.safe_load((DATASETS / "templates" / f"{name}.yaml").read_text(encoding="utf-8"))
        assert raw["format"] == "caption" and raw["description"] and raw["source"]
        assert load_template_set(DATASETS / "templates" / f"{name}.yaml", "caption_pair") == raw["templates"]
        assert load_template_set(DATASETS / "templates" / f"{name}.yaml", "caption") == raw["templates"]
    with pytest.raises(ConfigError, match="a template set for format 'caption', used by a 'vqa' dataset"):
        load_template_set(DATASETS / "templates" / "video_caption.yaml", "vqa")
