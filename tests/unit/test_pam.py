"""The self_correction format and partial answer masking (PAM) at token level, with SmolLM2's tokenizer."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import write_jsonl
from mmtune.config.schema import DataConfig, DatasetSpec
from mmtune.data.formats import BadRow, Mapping, convert_self_correction
from mmtune.data.pipeline import build_conversation_data
from mmtune.data.self_correction import NO, REVISED, SEPARATOR, VERIFICATION, YES, parse_attempt
from mmtune.data.templates import BUILTIN_TEMPLATES, install_template, split_segments
from mmtune.data.tokenize import encode_segments
from mmtune.errors import DataError

QUESTION = "Tom has 3 apples and gets 4 more. How many apples does he have?"
WRONG = "3 + 4 = 8. The answer is 8."
RIGHT = "3 + 4 = 7. The answer is 7."
INCORRECT_ROW = {"question": QUESTION, "initial_answer": WRONG, "correct": "no", "reason": "3 + 4 is not 8.",
                 "revised_answer": RIGHT}
CORRECT_ROW = {"question": QUESTION, "initial_answer": RIGHT, "correct": True}
MAPPING = Mapping.for_format("self_correction", {}, {})


@pytest.fixture()
def tokenizer(smol_tokenizer):
    """The session's SmolLM2 tokenizer, its chat template restored after the test (cheaper than a deep copy)."""
    template = smol_tokenizer.chat_template
    yield smol_tokenizer
    smol_tokenizer.chat_template = template


def convert(row):
    return convert_self_correction(row, MAPPING)[0]


def encode(tokenizer, conv, **kw):
    return encode_segments(tokenizer, [split_segments(tokenizer, conv)], max_length=4096, **kw)[0]


def test_incorrect_sample_renders_as_one_assistant_turn_with_marked_segments():
    conv = convert(INCORRECT_ROW)
    assert [m["role"] for m in conv] == ["user", "assistant"]
    assert conv[1]["content"] == (f"{WRONG}{SEPARATOR}{VERIFICATION} {NO} 3 + 4 is not 8.{SEPARATOR}{REVISED} {RIGHT}")
    assert [p["trained"] for p in conv[1]["parts"]] == [False, True]
    correct = convert(CORRECT_ROW)[1]["content"]
    assert correct == f"{RIGHT}{SEPARATOR}{VERIFICATION} {YES}" and REVISED not in correct


@pytest.mark.parametrize("row, field, reason", [
    ({**INCORRECT_ROW, "revised_answer": None}, "revised_answer", "missing field"),
    ({**INCORRECT_ROW, "correct": "maybe"}, "correct", "wrong field type"),
    ({k: v for k, v in CORRECT_ROW.items() if k != "initial_answer"}, "initial_answer", "missing field"),
])
def test_bad_rows_name_the_field(row, field, reason):
    with pytest.raises(BadRow) as info:
        convert(row)
    assert info.value.field_name == field and info.value.reason == reason


@pytest.mark.parametrize("template", ["auto", *BUILTIN_TEMPLATES])
def test_pam_trains_verification_revision_and_end_of_turn_only(tokenizer, template):
    install_template(tokenizer, template)
    conv = convert(INCORRECT_ROW)
    enc = encode(tokenizer, conv)
    ids, trained = enc.input_ids, enc.trained
    # One trained run, and it starts exactly at the blank line before "Verification:".
    starts = [i for i in range(len(trained)) if trained[i] and (i == 0 or not trained[i - 1])]
    assert len(starts) == 1
    untrained_text = tokenizer.decode(ids[: starts[0]].tolist())
    trained_text = tokenizer.decode(ids[starts[0]:][trained[starts[0]:]].tolist())
    assert untrained_text.rstrip().endswith(WRONG) and QUESTION in untrained_text
    assert trained_text.startswith(SEPARATOR + VERIFICATION) and RIGHT in trained_text
    assert WRONG not in trained_text
    # The template's end of the answer (end-of-turn / eos token) is trained: the model learns to stop.
    full = tokenizer.apply_chat_template(conv, tokenize=False)
    answer_end = full.index(RIGHT) + len(RIGHT)
    assert trained_text.endswith(full[answer_end:].rstrip())
    # Segment-wise tokens equal the whole rendering's tokens: no token is split at the PAM boundary.
    assert ids.tolist() == tokenizer(full, add_special_tokens=False)["input_ids"]


def test_correct_sample_trains_only_the_yes_verdict(tokenizer):
    enc = encode(tokenizer, convert(CORRECT_ROW))
    trained_text = tokenizer.decode(enc.input_ids[enc.trained].tolist())
    assert trained_text == f"{SEPARATOR}{VERIFICATION} {YES}<|im_end|>"


def test_train_on_prompt_trains_the_initial_answer_too(tokenizer):
    enc = encode(tokenizer, convert(INCORRECT_ROW), train_on_prompt=True)
    assert enc.trained.all()


def test_parts_that_do_not_join_to_the_content_are_refused(tokenizer):
    conv = convert(INCORRECT_ROW)
    conv[1]["parts"] = [{"text": "something else", "trained": False}]
    with pytest.raises(DataError, match="parts do not join"):
        split_segments(tokenizer, conv)


def test_template_that_rewrites_the_answer_is_refused(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\nA: ' }}"
                               "{% else %}{{ m['content'] | upper }}{% endif %}{% endfor %}")
    with pytest.raises(DataError, match="changes the text"):
        split_segments(tokenizer, convert(INCORRECT_ROW))


def test_plain_answers_are_unaffected(tokenizer):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    segs = split_segments(tokenizer, conv)
    assert [s.trained for s in segs] == [False, True, False] and segs[1].text == "Hello.<|im_end|>"


def test_pipeline_builds_pam_samples_without_a_boundary_warning(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "sc.jsonl", [INCORRECT_ROW, CORRECT_ROW])
    with caplog.at_level(logging.WARNING):
        data = build_conversation_data(tokenizer, DataConfig(datasets=[DatasetSpec(path=str(path), format="self_correction")],
                                                     cache_dir=str(tmp_path / "cache")), seed=0)
    assert "turn boundaries" not in caplog.text
    assert len(data.train) == 2
    for k in range(2):
        ids, trained = (np.asarray(a) for a in data.train[k])
        assert tokenizer.decode(ids[trained].tolist()).startswith(SEPARATOR + VERIFICATION)


def test_parse_attempt_reads_back_what_the_format_renders():
    a = parse_attempt(convert(INCORRECT_ROW)[1]["content"])
    assert (a.initial, a.verdict, a.revised, a.final) == (WRONG, False, RIGHT, RIGHT)
    b = parse_attempt(convert(CORRECT_ROW)[1]["content"])
    assert (b.initial, b.verdict, b.revised, b.final) == (RIGHT, True, None, RIGHT)
    c = parse_attempt("just an answer")
    assert (c.initial, c.verdict, c.final) == ("just an answer", None, "just an answer")
    assert parse_attempt(f"x{SEPARATOR}{VERIFICATION} no, it is wrong").verdict is False
    assert parse_attempt(f"x{SEPARATOR}{VERIFICATION} maybe").verdict is None
