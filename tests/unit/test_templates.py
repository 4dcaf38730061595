"""Chat templates and loss masking at token level."""

from __future__ import annotations

import numpy as np
import pytest

from mmtune.data.templates import BUILTIN_TEMPLATES, install_template, split_segments
from mmtune.data.tokenize import encode_segments
from mmtune.errors import ConfigError, DataError

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two is the only even prime."},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You're welcome."},
]


def encode(tokenizer, conv, **kw):
    return encode_segments(tokenizer, [split_segments(tokenizer, conv)], max_length=kw.pop("max_length", 4096), **kw)[0]


def assistant_turns(conv):
    return [i for i, m in enumerate(conv) if m["role"] == "assistant"]


@pytest.mark.parametrize("template", ["auto", *BUILTIN_TEMPLATES])
def test_training_prefix_equals_inference_prompt_at_every_assistant_turn(tokenizer, template):
    install_template(tokenizer, template)
    enc = encode(tokenizer, CONVERSATION)
    trained = enc.trained
    # Starts of trained runs are where the assistant answers begin.
    starts = [i for i in range(len(trained)) if trained[i] and (i == 0 or not trained[i - 1])]
    assert len(starts) == len(assistant_turns(CONVERSATION))
    for start, turn in zip(starts, assistant_turns(CONVERSATION)):
        prompt = tokenizer.apply_chat_template(CONVERSATION[:turn], add_generation_prompt=True, tokenize=True)
        prompt_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        assert enc.input_ids[:start].tolist() == list(prompt_ids)


def test_chat_template_auto_trains_answers_and_end_of_turn_only(tokenizer):
    install_template(tokenizer, "auto")
    enc = encode(tokenizer, CONVERSATION)
    trained_text = tokenizer.decode(enc.input_ids[enc.trained])
    for turn in assistant_turns(CONVERSATION):
        assert CONVERSATION[turn]["content"] in trained_text
    for msg in CONVERSATION:
        if msg["role"] != "assistant":
            assert msg["content"] not in trained_text
    # The end-of-turn token that closes each answer is trained, so the model learns to stop.
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = enc.input_ids
    eot_trained = [bool(enc.trained[i]) for i in range(len(ids)) if ids[i] == eot]
    # system, 3 users, 3 assistants each end with <|im_end|>: only the 3 assistant ones are trained.
    assert eot_trained.count(True) == 3 and eot_trained.count(False) == 4


@pytest.mark.parametrize("template", ["alpaca", "vicuna_v1", "llama2", "plain"])
def test_builtin_templates_train_the_eos_token_after_each_answer(tokenizer, template):
    install_template(tokenizer, template)
    enc = encode(tokenizer, CONVERSATION)
    eos_positions = np.flatnonzero(enc.input_ids == tokenizer.eos_token_id)
    trained_eos = [p for p in eos_positions if enc.trained[p]]
    assert len(trained_eos) == len(assistant_turns(CONVERSATION))
    # Each trained eos directly follows trained answer text.
    for p in trained_eos:
        assert enc.trained[p - 1]


def test_vicuna_v1_renders_as_llava_defines_it(tokenizer):
    install_template(tokenizer, "vicuna_v1")
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
    assert text == f"{system} USER: Hi ASSISTANT: Hello.{tokenizer.eos_token}"
    prompt = tokenizer.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{system} USER: Hi ASSISTANT:"


def test_train_on_prompt_trains_everything(tokenizer):
    install_template(tokenizer, "auto")
    enc = encode(tokenizer, CONVERSATION, train_on_prompt=True)
    assert enc.trained.all()
    assert not encode(tokenizer, CONVERSATION).trained.all()


def test_truncation_cuts_at_max_length_and_reports_it(tokenizer):
    install_template(tokenizer, "auto")
    full = encode(tokenizer, CONVERSATION)
    cut = encode(tokenizer, CONVERSATION, max_length=20)
    assert cut.truncated and not full.truncated
    assert cut.input_ids.tolist() == full.input_ids[:20].tolist()
    assert cut.trained.tolist() == full.trained[:20].tolist()


def test_template_that_rewrites_history_is_rejected(tokenizer):
    # Renders only the last user message: turn 2 is not a continuation of turn 1.
    tokenizer.chat_template = (
        "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>>{% endif %}"
    )
    with pytest.raises(DataError, match="continuation"):
        split_segments(tokenizer, CONVERSATION[1:])


def test_no_template_and_auto_is_a_config_error(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="no chat template"):
        install_template(tokenizer, "auto")
    install_template(tokenizer, "chatml")  # naming one fixes it
    assert "<|im_start|>" in tokenizer.apply_chat_template(CONVERSATION[1:3], tokenize=False)


def test_boundary_check_flags_templates_whose_turns_merge_into_one_token(tokenizer):
    """Turn text glued to the answer (" answer" + "ing: ...") tokenizes differently as a whole: detected."""
    from mmtune.data.tokenize import boundary_mismatches

    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q ' + m['content'] + ' answer' }}"
        "{% else %}{{ 'ing: ' + m['content'] }}{% endif %}{% endfor %}"
    )
    conv = CONVERSATION[1:5]
    enc = encode(tokenizer, conv)
    # turn 1's prompt is one segment; before turn 3, " answer" + "ing: Seven." were tokenized apart
    assert boundary_mismatches(tokenizer, conv, enc) == [3]
    install_template(tokenizer, "alpaca")  # built-ins keep turn boundaries on token boundaries
    assert boundary_mismatches(tokenizer, conv, encode(tokenizer, conv)) == []
