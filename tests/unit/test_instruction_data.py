"""InstructBLIP instruction data: the task formats (vqa, caption), seeded template draws recorded per sample,
the shipped template sets and cards, held-out sets, and bad rows as one line or a counted skip."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, write_jsonl
from media_helpers import image_specs, open_clip_image_branch

from mmtune.config.schema import DataConfig, DatasetSpec, SftRecipe
from mmtune.data.formats import Mapping
from mmtune.data.instruction_templates import TEMPLATE_KEY, load_template_set
from mmtune.data.pipeline import (
    SourceReport,
    build_conversation_data,
    conversations_of,
    training_source,
)
from mmtune.data.sources import resolve_source
from mmtune.data.task_formats import InstructionOptions, convert_vqa, select_answer
from mmtune.errors import ConfigError, DataError
from mmtune.modalities.image import IMAGE_TAG

DATASETS = REPO / "datasets"
PHOTOS = DATASETS / "mmtune-vision" / "images"
TASK_CARDS = sorted(p.stem for p in DATASETS.glob("*.yaml")
                    if yaml.safe_load(p.read_text(encoding="utf-8")).get("format") in ("vqa", "caption"))

# The published sets (InstructBLIP appendix / LAVIS), as the issue quotes them.
PUBLISHED = {
    "caption": ["<Image>A short image caption:", "<Image>A short image description:", "<Image>A photo of",
                "<Image>An image that shows", "<Image>Write a short description for the image.",
                "<Image>Write a description for the photo.",
                "<Image>Provide a description of what is presented in the photo.",
                "<Image>Briefly describe the content of the image.",
                "<Image>Can you briefly explain what you see in the image?",
                "<Image>Could you use a few words to describe what you perceive in the photo?",
                "<Image>Please provide a short depiction of the picture.",
                "<Image>Using language, provide a short account of the image.",
                "<Image>Use a few words to illustrate what is happening in the picture."],
    "vqa": ["<Image>{Question}", "<Image>Question: {Question}", "<Image>{Question} A short answer to the question is",
            "<Image>Q: {Question} A:", "<Image>Question: {Question} Short answer:",
            "<Image>Given the image, answer the following question with no more than three words. {Question}",
            "<Image>Based on the image, respond to this question with a short answer: {Question}. Answer:",
            "<Image>Use the provided image to answer the question: {Question} Provide your answer as short as possible:",
            "<Image>What is the answer to the following question? \"{Question}\"",
            "<Image>The question \"{Question}\" can be answered using the image. A short answer is"],
}


def vqa_rows(n: int) -> list[dict]:
    return [{"question_id": i, "question": f"What is shown in picture {i}?", "image": "chelsea.jpg",
             "answer": ["cat"] * 7 + ["kitten"] * 3} for i in range(n)]


def convs_of(spec: DatasetSpec, on_bad: str = "error") -> tuple[list, SourceReport]:
    src = resolve_source(spec)
    report = SourceReport(src.name)
    return list(conversations_of(src, report, on_bad)), report


def example_card(tmp_path: Path, name: str, **changes) -> Path:
    """A shipped card pointed at its example rows (``datasets/examples/NAME.json``), keys changed as given."""
    raw = yaml.safe_load((DATASETS / f"{name}.yaml").read_text(encoding="utf-8"))
    raw.update(path=str(DATASETS / "examples" / f"{name}.json"), **changes)
    card = tmp_path / "cards" / f"{name}.yaml"
    card.parent.mkdir(exist_ok=True)
    card.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return card


def template_of(conv) -> tuple[int, str]:
    index, _, text = conv[0][TEMPLATE_KEY].partition(": ")
    return int(index), text


# --------------------------------------------------------------------------- answers


def test_most_frequent_answer_and_a_tie_goes_to_the_first_seen():
    assert select_answer(["two", "2", "2", "two", "3"], "most_frequent", None) == "two"
    assert select_answer(["x", "y", "y"], "most_frequent", None) == "y"
    # VQAv2's official annotations: a list of {"answer": ...} objects; every annotation is a reference.
    row = {"question": "How many?", "image": "a.jpg",
           "answer": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                      for i, a in enumerate(["3", "three", "three", "3", "4"])]}
    opts = InstructionOptions(["{question}"], "most_frequent", "per_caption", seed=0)
    conv = convert_vqa(row, Mapping.for_format("vqa", {}, {}), opts, 0)[0]
    assert conv[1]["content"] == "3" and conv[1]["references"] == ["3", "three", "three", "3", "4"]
    one = convert_vqa({"question": "Q?", "image": "a.jpg", "answer": "yes"}, Mapping.for_format("vqa", {}, {}), opts, 0)
    assert one[0][1]["content"] == "yes" and one[0][1]["references"] == ["yes"]


def test_sampled_answers_follow_the_annotators_frequencies():
    row = {"question": "What animal?", "image": "a.jpg", "answer": ["cat"] * 6 + ["kitten"] * 3 + ["tabby"]}
    mapping = Mapping.for_format("vqa", {}, {})
    n = 3000
    drawn = Counter(convert_vqa(row, mapping, InstructionOptions(["{question}"], "sample", "per_caption", seed), 0)
                    [0][1]["content"] for seed in range(n))
    for answer, share in (("cat", 0.6), ("kitten", 0.3), ("tabby", 0.1)):
        assert abs(drawn[answer] / n - share) < 0.03, drawn
    # most_frequent never varies with the seed
    assert {convert_vqa(row, mapping, InstructionOptions(["{question}"], "most_frequent", "per_caption", s), 0)[0][1]
            ["content"] for s in range(50)} == {"cat"}


# --------------------------------------------------------------------------- templates


def test_shipped_template_sets_are_the_published_ones():
    for fmt, published in PUBLISHED.items():
        ours = load_template_set(DATASETS / "templates" / f"instructblip_{fmt}.yaml", fmt)
        assert ours == [t.removeprefix("<Image>").replace("{Question}", "{question}") for t in published]


def test_template_draw_is_seeded_per_row_and_recorded(tmp_path):
    path = write_jsonl(tmp_path / "vqa.jsonl", vqa_rows(40))
    first, _ = convs_of(DatasetSpec(path=str(path), format="vqa", draw_seed=5))
    again, _ = convs_of(DatasetSpec(path=str(path), format="vqa", draw_seed=5))
    other, _ = convs_of(DatasetSpec(path=str(path), format="vqa", draw_seed=6))
    assert first == again
    assert [c[0][TEMPLATE_KEY] for _, c in first] != [c[0][TEMPLATE_KEY] for _, c in other]
    published = load_template_set(DATASETS / "templates" / "instructblip_vqa.yaml", "vqa")
    drawn = set()
    for k, (_, conv) in enumerate(first):
        index, text = template_of(conv)
        assert published[index] == text
        assert conv[0]["content"] == IMAGE_TAG + text.replace("{question}", f"What is shown in picture {k}?")
        assert conv[0]["media"] == [{"modality": "image", "ref": "chelsea.jpg", "field": "image"}]
        drawn.add(index)
    assert len(drawn) >= 6  # rows draw different templates


def test_a_skipped_row_changes_no_other_draw(tmp_path):
    rows = vqa_rows(12)
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    broken = write_jsonl(tmp_path / "broken.jsonl", [*rows[:5], {**rows[5], "question": None}, *rows[6:]])
    a, _ = convs_of(DatasetSpec(path=str(good), format="vqa"))
    b, report = convs_of(DatasetSpec(path=str(broken), format="vqa"), "skip")
    assert report.skipped == {"missing field": 1}
    assert [c for _, c in b] == [c for k, (_, c) in enumerate(a) if k != 5]


def test_the_recipe_seed_draws_unless_the_dataset_sets_one(tmp_path):
    path = write_jsonl(tmp_path / "vqa.jsonl", vqa_rows(2))
    assert training_source(resolve_source(DatasetSpec(path=str(path), format="vqa")), 7).settings.draw_seed == 7
    assert training_source(resolve_source(DatasetSpec(path=str(path), format="vqa", draw_seed=1)), 7) \
        .settings.draw_seed == 1
    text = write_jsonl(tmp_path / "chat.jsonl", [{"instruction": "Hi", "output": "Hello"}])
    assert training_source(resolve_source(DatasetSpec(path=str(text), format="alpaca")), 7).settings.draw_seed is None


def test_own_templates_on_an_entry_and_bad_ones_are_one_line(tmp_path):
    path = write_jsonl(tmp_path / "vqa.jsonl", vqa_rows(3))
    convs, _ = convs_of(DatasetSpec(path=str(path), format="vqa", templates=["Answer briefly: {question}"]))
    assert {c[0][TEMPLATE_KEY] for _, c in convs} == {"0: Answer briefly: {question}"}
    with pytest.raises(ConfigError, match=r"templates\[0\]: a vqa template holds \{question\} exactly once"):
        resolve_source(DatasetSpec(path=str(path), format="vqa", templates=["Describe the image."]))
    with pytest.raises(ConfigError, match="a template holds no media tag"):
        resolve_source(DatasetSpec(path=str(path), format="vqa", templates=["<image>{question}"]))
    with pytest.raises(ConfigError, match="a template set for format 'caption', used by a 'vqa' dataset"):
        resolve_source(DatasetSpec(path=str(path), format="vqa", templates="instructblip_caption"))
    with pytest.raises(ConfigError, match="'templates' applies to the formats vqa, caption, caption_pair, not 'alpaca'"):
        resolve_source(DatasetSpec(path=str(path), format="alpaca", templates=["x"]))
    with pytest.raises(ConfigError, match="malformed pattern"):
        convs_of(DatasetSpec(path=str(path), format="vqa", columns={"image": "{image_id"}))


# --------------------------------------------------------------------------- captions


def test_caption_samples_and_references(tmp_path):
    # COCO Karpathy train: one caption per row; the references gather every caption of the image.
    rows = [{"caption": f"cat {k}", "image": "chelsea.jpg"} for k in range(3)] + [{"caption": "cup", "image": "coffee.jpg"}]
    convs, _ = convs_of(DatasetSpec(path=str(write_jsonl(tmp_path / "coco.jsonl", rows)), format="caption"))
    assert [c[1]["content"] for _, c in convs] == ["cat 0", "cat 1", "cat 2", "cup"]
    assert [c[1]["references"] for _, c in convs] == [["cat 0", "cat 1", "cat 2"]] * 3 + [["cup"]]
    assert all(c[0]["content"] == IMAGE_TAG + template_of(c)[1] for _, c in convs)
    # Karpathy test: a caption list per row; per_caption (default) gives one sample each, per_row one drawn.
    listed = write_jsonl(tmp_path / "test.jsonl", [{"image": "chelsea.jpg", "caption": ["a", "b", "c"]}])
    each, _ = convs_of(DatasetSpec(path=str(listed), format="caption"))
    assert [c[1]["content"] for _, c in each] == ["a", "b", "c"]
    one, _ = convs_of(DatasetSpec(path=str(listed), format="caption", caption_samples="per_row"))
    assert len(one) == 1 and one[0][1][1]["content"] in "abc" and one[0][1][1]["references"] == ["a", "b", "c"]


# --------------------------------------------------------------------------- shipped cards


@pytest.mark.parametrize("name", TASK_CARDS)
def test_every_shipped_card_maps_its_example_rows(tmp_path, name):
    card = yaml.safe_load((DATASETS / f"{name}.yaml").read_text(encoding="utf-8"))
    convs, report = convs_of(DatasetSpec(card=str(example_card(tmp_path, name))))
    assert report.skipped == {} and report.rows >= 3
    templates = resolve_source(DatasetSpec(card=str(example_card(tmp_path, name)))).settings.templates
    for _, conv in convs:
        user, answer = conv
        index, text = template_of(conv)
        assert templates[index] == text and user["content"].startswith(IMAGE_TAG)
        assert len(user["media"]) == 1 and user["media"][0]["ref"].endswith(".jpg")
        assert answer["content"] in answer["references"] and all(isinstance(r, str) for r in answer["references"])
    assert "held_out" not in card or card["held_out"] is True
    if name == "aokvqa":
        answer = convs[0][1][1]
        assert convs[0][1][0]["media"][0]["ref"] == "train2017/000000299207.jpg"
        assert answer["choices"][answer["correct_choice"]] == "filming" and len(answer["references"]) == 10
    if name == "textcaps":
        assert all(len(c[1]["references"]) == 5 for _, c in convs)


def test_example_rows_train_with_their_images_in_a_sqrt_mixture(tmp_path, tokenizer):
    entries = [{"card": str(example_card(tmp_path, name, media_folder=str(PHOTOS)))} for name in ("vqav2", "coco-caption")]
    cfg = DataConfig(datasets=entries, mixture="sqrt", mixture_size=20, max_length=256, cache_dir=str(tmp_path / "cache"))
    data = build_conversation_data(tokenizer, cfg, seed=3, media=image_specs())
    assert [(r.samples, r.media) for r in data.reports] == [(6, {"image": 6}), (6, {"image": 6})]
    refs = data.train.refs
    assert len(refs) == 20 and sorted(Counter(refs[:, 0].tolist()).values()) == [10, 10]  # sqrt(6) each
    assert all(TEMPLATE_KEY in data.train.meta(k) for k in range(len(data.train)))
    again = build_conversation_data(tokenizer, cfg, seed=3, media=image_specs())
    assert all(r.from_cache for r in again.reports)
    assert [again.train.meta(k) for k in range(20)] == [data.train.meta(k) for k in range(20)]


def test_inspect_shows_each_samples_template(tmp_path, tiny_llama_dir):
    from mmtune.data.inspect import inspect_data

    card = example_card(tmp_path, "vqav2", media_folder=str(PHOTOS))
    recipe = SftRecipe(model={"name": str(tiny_llama_dir), "media": {"image": open_clip_image_branch().model_dump()}},
                       data={"datasets": [{"card": str(card)}], "cache_dir": str(tmp_path / "cache"), "shuffle": False,
                             "packing": False})
    out = inspect_data(recipe, samples=3)
    shown = [line.removeprefix("-- instruction template ") for line in out.splitlines()
             if line.startswith("-- instruction template ")]
    expected = [conv[0][TEMPLATE_KEY] for _, conv in convs_of(DatasetSpec(card=str(card), draw_seed=42))[0]]
    assert len(shown) == 3 and shown == expected[:3]


# --------------------------------------------------------------------------- held-out sets and evaluation


def test_held_out_sets_are_refused_for_training_and_read_for_evaluation(tmp_path, tokenizer):
    from mmtune.evaluation import load_eval_data

    card = example_card(tmp_path, "gqa", media_folder=str(PHOTOS))
    cfg = DataConfig(datasets=[{"card": str(card)}], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as exc:
        build_conversation_data(tokenizer, cfg, seed=0, media=image_specs())
    assert str(exc.value) == ("dataset 'gqa' is marked held_out; it is for zero-shot evaluation "
                              "(mmtune eval --data gqa), not training")
    assert resolve_source(DatasetSpec(card=str(card), held_out=False)).settings.held_out is False
    data = load_eval_data(card)
    assert [c[-1]["references"] for _, c in data.conversations] == [["brown"], ["yes"], ["camera"]]
    assert all(Path(c[0]["media"][0]["ref"]).is_file() for _, c in data.conversations)


def test_a_shipped_card_without_its_file_is_one_line_naming_card_and_path(tmp_path, tokenizer, monkeypatch):
    # The shipped card, found by name in ./datasets (searched before the repository's), whose file is absent
    # there whether or not VQAv2 is installed next to the repository.
    local = (tmp_path / "datasets").resolve()
    local.mkdir()
    shutil.copy(DATASETS / "vqav2.yaml", local / "vqav2.yaml")
    monkeypatch.chdir(tmp_path)
    expected = local / "vqav2" / "vqa_train.json"
    src = resolve_source(DatasetSpec(card="vqav2"))
    with pytest.raises(DataError) as exc:
        list(conversations_of(src, SourceReport(src.name), "error"))
    message = str(exc.value)
    assert "\n" not in message and str(expected) in message and "dataset card 'vqav2'" in message
    assert str(local / "vqav2.yaml") in message
    cfg = DataConfig(datasets=[{"card": "vqav2"}], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="vqa_train.json: data file not found \\(dataset card 'vqav2'"):
        build_conversation_data(tokenizer, cfg, seed=0)


# --------------------------------------------------------------------------- bad rows


BAD_ROWS = [
    ({"image": "a.jpg", "answer": ["x"]}, "missing field", "question"),
    ({"image": "a.jpg", "question": "Q?", "answer": []}, "empty list", "answer"),
    ({"image": "a.jpg", "question": "Q?", "answer": 3}, "wrong field type", "answer"),
    ({"image": "a.jpg", "question": "Q?", "answer": ["x", 3]}, "wrong field type", "answer[1]"),
    ({"question": "Q?", "answer": ["x"]}, "missing field", "image"),
]


@pytest.mark.parametrize(("row", "reason", "field"), BAD_ROWS)
def test_a_bad_row_is_one_line_naming_file_row_and_field_or_a_counted_skip(tmp_path, row, reason, field):
    path = write_jsonl(tmp_path / "vqa.jsonl", [*vqa_rows(1), row, *vqa_rows(1)])
    with pytest.raises(DataError) as exc:
        convs_of(DatasetSpec(path=str(path), format="vqa"))
    assert str(exc.value).startswith(f"{path}:2: field '{field}': ") and "\n" not in str(exc.value)
    assert exc.value.reason == reason
    convs, report = convs_of(DatasetSpec(path=str(path), format="vqa"), "skip")
    assert len(convs) == 2 and report.skipped == {reason: 1} and report.examples[reason] == f"{path}:2"


def test_json_objects_with_several_row_lists_are_one_line(tmp_path):
    path = tmp_path / "captions_train2014.json"
    path.write_text(json.dumps({"info": {}, "images": [{"id": 1}], "annotations": [{"caption": "x"}]}))
    with pytest.raises(DataError, match=r"got an object with lists under \['images', 'annotations'\]"):
        convs_of(DatasetSpec(path=str(path), format="caption"))


def test_a_pattern_field_missing_from_a_row_names_that_field(tmp_path):
    shutil.copy(PHOTOS / "clock.jpg", tmp_path / "clock.jpg")
    path = write_jsonl(tmp_path / "tv.jsonl", [{"question": "Q?", "answers": ["a"], "image_id": "clock"},
                                                {"question": "Q?", "answers": ["a"]}])
    spec = DatasetSpec(path=str(path), format="vqa", columns={"image": "{image_id}.jpg", "answers": "answers"})
    with pytest.raises(DataError, match=r"tv.jsonl:2: field 'image_id': required field 'image_id' \(of the image "
                                        r"pattern '\{image_id\}.jpg'\) is missing"):
        convs_of(spec)
    convs, _ = convs_of(spec, "skip")
    assert convs[0][1][0]["media"][0] == {"modality": "image", "ref": "clock.jpg", "field": "image_id"}
