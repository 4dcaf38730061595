"""Benchmark judges without a model: VQA answer normalisation and accuracy, multiple-choice matching, CIDEr-D,
and what ``mmtune eval`` reads of each row for them (references, choices, groups, the prompt template)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
from media_helpers import write_json

from mmtune.errors import ConfigError, DataError
from mmtune.eval_metrics import caption_tokens, cider_d, match_choice, normalize_vqa_answer, vqa_accuracy
from mmtune.evaluation import (
    CAPTION_MAX_NEW_TOKENS, SHORT_ANSWER_MAX_NEW_TOKENS, default_max_new_tokens, load_eval_data, sample_targets,
    with_prompt,
)
from mmtune.generation.options import GenerationOptions

# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(("raw", "want"), [
    ("Two", "2"),  # number words to digits, after lower-casing
    ("the dog.", "dog"),  # period dropped, article dropped
    ("yes!", "yes"),  # a mark touching no space becomes a space, then spaces collapse
    ("Yes", "yes"),
    ("An Apple", "apple"),
    ("none", "0"),
    ("1,000", "1000"),  # a comma between digits: every mark is deleted, not spaced
    ("red, white", "red white"),  # a mark next to a space is deleted
    ("red/white", "red white"),  # elsewhere it becomes a space
    ("3.5", "3.5"),  # a period before a digit stays
    ("5.", "5"),
    ("dont", "don't"),  # contractions spelled without the apostrophe
    ("what's", "what's"),  # apostrophes and colons are not punctuation to the script
    ("10:30", "10:30"),
    ("  two\n dogs\t", "2 dogs"),
])
def test_vqa_normalisation(raw, want):
    assert normalize_vqa_answer(raw) == want


# --------------------------------------------------------------------------- VQA accuracy


def _subset_rule(prediction: str, references: list[str]) -> float:
    """The VQAv2 rule written literally: every subset of 9 of the 10 answers, min(matches / 3, 1), averaged."""
    answer = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(r) for r in references]
    subsets = list(itertools.combinations(range(len(humans)), len(humans) - 1))
    return sum(min(1.0, sum(humans[i] == answer for i in s) / 3) for s in subsets) / len(subsets)


def test_vqa_accuracy_on_ten_answers_by_hand():
    # 2 of 10 annotators said "2". Leaving out one of those 2 leaves 1 match: min(1/3, 1) = 1/3 (2 subsets);
    # leaving out one of the 8 others leaves 2 matches: 2/3 (8 subsets). (2 * 1/3 + 8 * 2/3) / 10 = 18/30 = 0.6.
    answers = ["2", "two"] + ["3"] * 8
    assert vqa_accuracy("Two", answers) == pytest.approx(0.6)
    # 1 match: 9 subsets hold it (1/3 each), 1 does not: 3/10. 3 matches: 3 subsets hold 2 (2/3), 7 hold 3 (1):
    # (2 + 7) / 10 = 0.9. 4 or more: every subset holds at least 3: 1.
    want = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
    for k, acc in want.items():
        assert vqa_accuracy("yes", ["yes"] * k + ["no"] * (10 - k)) == pytest.approx(acc)
    assert vqa_accuracy("The dog.", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)  # compared normalised
    assert vqa_accuracy("dog", ["Dog", "A dog", "dog!"] + ["cat"] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_equals_the_literal_subset_rule():
    rng = random.Random(0)
    vocab = ["yes", "no", "2", "two", "red", "Red.", "the cat"]
    for _ in range(200):
        answers = [rng.choice(vocab) for _ in range(10)]
        prediction = rng.choice(vocab)
        assert vqa_accuracy(prediction, answers) == pytest.approx(_subset_rule(prediction, answers))


def test_vqa_accuracy_with_fewer_answers():
    assert vqa_accuracy("Yes", ["yes"]) == 1.0 and vqa_accuracy("no", ["yes"]) == 0.0  # one answer: exact match
    assert vqa_accuracy("yes", ["yes", "yes"]) == 1.0  # leave-one-out, threshold n - 1 = 1
    assert vqa_accuracy("yes", ["yes", "no"]) == pytest.approx(0.5)
    # 3 answers, threshold 2: dropping either "yes" leaves 1/2, dropping "no" leaves 2/2: (0.5 + 0.5 + 1) / 3
    assert vqa_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(2 / 3)
    # 5 answers, threshold 3 as with 10: dropping the match leaves 0, the 4 others 1/3 each: 4/15
    assert vqa_accuracy("yes", ["yes", "no", "no", "no", "no"]) == pytest.approx(4 / 15)
    # from 4 answers up it is the literal subset rule
    five = ["yes", "yes", "no", "no", "no"]
    assert vqa_accuracy("yes", five) == pytest.approx(_subset_rule("yes", five))
    with pytest.raises(ValueError):
        vqa_accuracy("yes", [])


# --------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize(("said", "want"), [
    ("B", 1), ("(B)", 1), ("B.", 1), ("(b) dog", 1), ("C) a red bus", 2), ("The answer is C.", 2), ("Answer: A", 0),
    ("dog", 1), ("The dog.", 1), ("A dog", 1), ("The answer is a dog.", 1),  # "a" as an article, not a letter
    ("ANSWER: (C)", 2),
    ("It is a red bus", 2),  # the only choice whose words appear
    ("D", None),  # beyond the choices
    ("cat or dog", None),  # names two choices
    ("horse", None),
])
def test_match_choice(said, want):
    assert match_choice(said, ["cat", "dog", "a red bus"]) == want


# --------------------------------------------------------------------------- CIDEr-D


def test_caption_tokens():
    assert caption_tokens("A dog's toy isn't black-and-white; it costs 3.5 dollars, 1,000 times.") == [
        "a", "dog", "'s", "toy", "is", "n't", "black-and-white", "it", "costs", "3.5", "dollars", "1,000", "times"]


def test_cider_d_by_hand():
    # Two images, one reference each, no n-gram shared between them: every reference n-gram has document
    # frequency 1 of 2 images, so its weight is log(2) - log(1); an n-gram in no reference gets log(2) - log(1)
    # too. An identical caption has cosine 1 at every n = 1..4 and no length penalty: 10 * mean(1, 1, 1, 1) = 10.
    refs = [["a b c d"], ["e f g h"]]
    mean, scores = cider_d(["a b c d", "e f g h"], refs)
    assert scores == pytest.approx([10.0, 10.0]) and mean == pytest.approx(10.0)
    # "a b c x" against "a b c d" (all weights equal): unigrams share 3 of 4 -> 3/4, bigrams 2 of 3 -> 2/3,
    # trigrams 1 of 2 -> 1/2, 4-grams none -> 0; equal lengths, no penalty: 10 * (3/4 + 2/3 + 1/2 + 0) / 4 = 230/48
    mean, scores = cider_d(["A b c, x.", "e f g h"], refs)
    assert scores == pytest.approx([230 / 48, 10.0]) and mean == pytest.approx((230 / 48 + 10) / 2)
    # the captions swapped share nothing with their references
    assert cider_d(["e f g h", "a b c d"], refs) == (0.0, [0.0, 0.0])


def test_cider_d_ranks_captions():
    refs = [["a man riding a wave on a surfboard", "a surfer rides a large wave"],
            ["a plate of food with broccoli and rice", "rice and broccoli on a white plate"],
            ["two dogs playing in the snow", "dogs run through the snow together"]]
    good = ["a surfer riding a wave", "a plate with rice and broccoli", "two dogs in the snow"]
    unrelated = ["a plate with rice and broccoli", "two dogs in the snow", "a surfer riding a wave"]
    _, good_scores = cider_d(good, refs)
    _, bad_scores = cider_d(unrelated, refs)
    assert all(g > b for g, b in zip(good_scores, bad_scores))
    assert cider_d(["anything at all"], [["anything at all"]]) == (0.0, [0.0])  # one image: idf is 0
    assert math.isnan(cider_d([], [])[0])
    with pytest.raises(ValueError):
        cider_d(["x"], [[]])


# --------------------------------------------------------------------------- what eval reads of each row


def _llava(question: str = "What is it?", answer: str = "blue", **extra) -> dict:
    return {"image": "p0.png", "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                                 {"from": "gpt", "value": answer}], **extra}


def test_references_choices_and_groups_come_from_the_row(photos):
    rows = [
        _llava(references=["blue"] * 10, question_type="colour"),
        {**_llava(question_type="count", score=3), "conversations": [
            {"from": "human", "value": "<image>\nHow many?"},
            {"from": "gpt", "value": "2", "references": ["2", "two"]}]},  # on the answer message
        _llava(answer="B", choices=["red", "blue"]),  # gold by letter, no group
        _llava(answer="the red one", choices=["red one", "blue one"], references=["red"]),  # gold by text
        _llava(answer="whatever", choices=["red", "blue"], correct_choice=1, references=["red"]),  # gold by index
    ]
    data = load_eval_data(write_json(photos / "d.json", rows))
    targets = sample_targets(data, ["vqa", "choice"], group_by="question_type", on_bad_sample="skip")
    assert targets.answers == [["blue"] * 10, ["2", "two"], None, ["red"], ["red"]]
    assert targets.gold_choice == [None, None, 1, 0, 1]
    assert targets.groups == ["colour", "count", "(none)", "(none)", "(none)"]
    assert targets.skipped == {"vqa": {"no references": 1}, "choice": {"no choices": 2}}
    assert targets.first_skipped["vqa"] == {"no references": f"{photos / 'd.json'}: row 3"}
    assert sample_targets(data, ["exact"], group_by="score").groups == ["(none)", "3", "(none)", "(none)", "(none)"]
    with pytest.raises(DataError, match="d.json: no row has the key 'question_typ' to group by"):
        sample_targets(data, ["exact"], group_by="question_typ")
    with pytest.raises(DataError, match=r"d.json: row 3: no 'references' \(the human answers"):
        sample_targets(data, ["vqa"])
    with pytest.raises(DataError, match=r"d.json: row 1: no 'choices'"):
        sample_targets(data, ["choice"])
    # cider: a row without references is scored against its gold answer (a caption dataset with one caption)
    assert sample_targets(data, ["cider"]).captions[2] == ["B"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"references": "blue"}, "field 'references': expected a list of at least 1 string"),
    ({"references": []}, "field 'references': expected a list of at least 1 string"),
    ({"choices": ["only one"]}, "field 'choices': expected a list of at least 2 string"),
    ({"choices": ["red", "green"]}, "the gold answer 'blue' names none of the choices"),
    ({"choices": ["red", "blue"], "correct_choice": 2}, "field 'correct_choice': expected an index into 'choices'"),
])
def test_bad_targets_are_one_line(photos, extra, message):
    good = _llava(references=["x"], choices=["blue", "red"])
    data = load_eval_data(write_json(photos / "bad.json", [good, _llava(**extra)]))
    metric = "choice" if "choices" in extra else "vqa"
    with pytest.raises(DataError, match=f"bad.json: row 2: {message}") as err:
        sample_targets(data, [metric])
    assert len(str(err.value).splitlines()) == 1
    skipped = sample_targets(data, [metric], on_bad_sample="skip").skipped[metric]
    assert sum(skipped.values()) == 1


def test_prompt_template_and_answer_lengths():
    conv = [{"role": "user", "content": "<image>\nWhat colour is the bus?",
             "media": [{"modality": "image", "ref": "bus.png", "field": "image"}]},
            {"role": "assistant", "content": "red"}]
    asked = with_prompt(conv, "Question: {} Short answer:")
    assert asked[0]["content"] == "<image>\nQuestion: What colour is the bus? Short answer:"
    assert asked[0]["media"] == conv[0]["media"] and asked[1] == conv[1] and conv[0]["content"].endswith("bus?")
    assert with_prompt(conv, "A short image caption.")[0]["content"] == "<image>\nA short image caption."
    assert with_prompt(conv, "Q: {} A:", question="bare")[0]["content"] == "<image>\nQ: bare A:"
    assert with_prompt(conv, None) is conv
    text = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}]
    assert with_prompt(text, "Question: {} Answer:")[0]["content"] == "Question: 2 + 2? Answer:"
    with pytest.raises(ConfigError, match="2 '{}' placeholders"):
        with_prompt(conv, "{} and {}")
    assert default_max_new_tokens(["vqa"]) == default_max_new_tokens(["choice", "exact"]) == SHORT_ANSWER_MAX_NEW_TOKENS
    assert default_max_new_tokens(["vqa", "cider"]) == CAPTION_MAX_NEW_TOKENS
    assert default_max_new_tokens(["exact", "loss"]) == GenerationOptions().max_new_tokens


def test_the_report_json_round_trips(photos):
    from mmtune.evaluation import EvalReport

    report = EvalReport("m", "d", 1, {"vqa": {"accuracy": 1.0, "count": 1}}, generation={"max_new_tokens": 10},
                        group_by="question_type")
    path = report.write(photos / "r.json")
    assert json.loads(path.read_text()) == {"model": "m", "data": "d", "samples": 1, "metrics": report.metrics,
                                            "skipped": {}, "generation": {"max_new_tokens": 10},
                                            "group_by": "question_type"}
    assert "VQA accuracy 1.000 (1 scored)" in report.summary()
