"""Prompt erasure (Orca-2): the detailed system instruction is replaced at training time, kept as metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_jsonl
from mmtune.config.schema import DataConfig, DatasetSpec, PromptErasure, SftRecipe
from mmtune.data.erasure import ERASED_KEY, erase_system_prompt
from mmtune.data.pipeline import build_conversation_data, cache_key, tokenizer_fingerprint
from mmtune.data.sources import resolve_source
from mmtune.errors import ConfigError

DETAILED = "Think step by step, write every intermediate sum, then give the number on its own line."
GENERIC = "You are a helpful assistant."

# One row per text format, each carrying the detailed instruction where the format allows a system message.
ROWS = {
    "alpaca": {"instruction": "Add 2 and 3.", "output": "5", "system": DETAILED},
    "sharegpt": {"conversations": [{"from": "system", "value": DETAILED}, {"from": "human", "value": "Add 2 and 3."},
                                   {"from": "gpt", "value": "5"}]},
    "openai": {"messages": [{"role": "system", "content": DETAILED}, {"role": "user", "content": "Add 2 and 3."},
                            {"role": "assistant", "content": "5"}]},
    "dolly": {"instruction": "Add 2 and 3.", "response": "5"},
    "oasst": {"prompt": {"text": "Add 2 and 3.", "role": "prompter", "replies": [{"text": "5", "role": "assistant"}]}},
    "self_correction": {"question": "Add 2 and 3.", "initial_answer": "6", "correct": False, "revised_answer": "5",
                        "system": DETAILED},
}


@pytest.fixture()
def tokenizer(smol_tokenizer):
    """These tests never change the tokenizer: the session's one, no deep copy."""
    return smol_tokenizer


def build(tokenizer, tmp_path: Path, spec: DatasetSpec):
    return build_conversation_data(tokenizer, DataConfig(datasets=[spec], cache_dir=str(tmp_path / "cache")), seed=0)


def test_erase_replaces_or_drops_the_system_message_and_keeps_it_as_metadata():
    conv = [{"role": "system", "content": DETAILED}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    replaced, meta = erase_system_prompt(conv, PromptErasure(replace_with=GENERIC))
    assert replaced == [{"role": "system", "content": GENERIC}, *conv[1:]] and meta == {ERASED_KEY: DETAILED}
    dropped, meta = erase_system_prompt(conv, PromptErasure(replace_with=None))
    assert dropped == conv[1:] and meta == {ERASED_KEY: DETAILED}
    assert conv[0]["content"] == DETAILED  # the input is not modified
    # No system message: nothing erased, but the generic one is added so all samples train alike.
    added, meta = erase_system_prompt(conv[1:], PromptErasure(replace_with=GENERIC))
    assert added[0] == {"role": "system", "content": GENERIC} and meta == {}


@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_trains_on_the_generic_prompt(tmp_path, tokenizer, fmt):
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", [ROWS[fmt]])
    data = build(tokenizer, tmp_path, DatasetSpec(path=str(path), format=fmt,
                                                  prompt_erasure=PromptErasure(replace_with=GENERIC)))
    text = tokenizer.decode(list(data.train[0][0]))
    assert GENERIC in text and DETAILED not in text
    had_system = DETAILED in str(ROWS[fmt])
    assert data.train.meta(0) == ({ERASED_KEY: DETAILED} if had_system else {})
    assert data.reports[0].erased == int(had_system)


def test_replace_with_null_leaves_the_templates_default_system(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [ROWS["alpaca"]])
    data = build(tokenizer, tmp_path, DatasetSpec(path=str(path), format="alpaca", prompt_erasure=PromptErasure()))
    text = tokenizer.decode(list(data.train[0][0]))
    # SmolLM2's own template writes its default system message when a conversation has none.
    assert DETAILED not in text and "You are a helpful AI assistant named SmolLM" in text
    assert data.train.meta(0) == {ERASED_KEY: DETAILED}


def test_without_erasure_nothing_changes_and_no_metadata(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [ROWS["alpaca"]])
    data = build(tokenizer, tmp_path, DatasetSpec(path=str(path), format="alpaca"))
    assert DETAILED in tokenizer.decode(list(data.train[0][0]))
    assert data.train.meta(0) == {} and data.reports[0].erased == 0


def test_erasure_is_part_of_the_cache_key_and_metadata_survives_the_cache(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [ROWS["alpaca"], {**ROWS["alpaca"], "system": "Other."}])
    cfg = DataConfig(datasets=[], cache_dir=str(tmp_path / "cache"))
    fp = tokenizer_fingerprint(tokenizer)
    specs = [DatasetSpec(path=str(path), format="alpaca", prompt_erasure=e)
             for e in (None, PromptErasure(), PromptErasure(replace_with=GENERIC), PromptErasure(replace_with="Other"))]
    keys = {cache_key(resolve_source(s), fp, cfg) for s in specs}
    assert len(keys) == len(specs)
    spec = specs[2]
    first = build(tokenizer, tmp_path, spec)
    again = build(tokenizer, tmp_path, spec)
    assert again.reports[0].from_cache and again.reports[0].erased == 2
    assert [again.train.meta(k) for k in range(2)] == [first.train.meta(k) for k in range(2)]
    assert sorted(m[ERASED_KEY] for m in (again.train.meta(0), again.train.meta(1))) == sorted([DETAILED, "Other."])


def test_card_sets_erasure_and_recipe_entry_overrides_it(tmp_path, tokenizer):
    write_jsonl(tmp_path / "data.jsonl", [ROWS["alpaca"]])
    card = tmp_path / "orca.yaml"
    card.write_text(f"path: data.jsonl\nformat: alpaca\nprompt_erasure:\n  replace_with: {GENERIC}\n")
    assert resolve_source(DatasetSpec(card=str(card))).settings.prompt_erasure == PromptErasure(replace_with=GENERIC)
    assert resolve_source(DatasetSpec(card=str(card), prompt_erasure=None)).settings.prompt_erasure is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("path: data.jsonl\nformat: alpaca\nprompt_erasure:\n  replace: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'prompt_erasure.replace'"):
        resolve_source(DatasetSpec(card=str(bad)))


def test_inspect_shows_the_erased_prompt_and_the_trained_one(tmp_path, tiny_llama_dir):
    from mmtune.data.inspect import inspect_data

    path = write_jsonl(tmp_path / "a.jsonl", [ROWS["sharegpt"]])
    recipe = SftRecipe(model={"name": str(tiny_llama_dir)},
                       data={"datasets": [{"path": str(path), "format": "sharegpt",
                                           "prompt_erasure": {"replace_with": GENERIC}}],
                             "cache_dir": str(tmp_path / "cache")})
    out = inspect_data(recipe, samples=1)
    erased_line = next(line for line in out.splitlines() if line.startswith("-- erased system prompt"))
    assert erased_line.endswith(DETAILED)
    body = out.split("-- trained on", 1)[1]
    assert GENERIC in body and DETAILED not in body
    assert "1 system prompts erased" in out


def test_erasure_keeps_the_images_of_a_llava_conversation():
    from mmtune.data.formats import Mapping, convert_llava

    row = {"id": "1", "image": "cat.jpg", "system": DETAILED,
           "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}
    conv = convert_llava(row, Mapping.for_format("llava", {}, {}))[0]
    erased, meta = erase_system_prompt(conv, PromptErasure(replace_with=GENERIC))
    assert erased[0] == {"role": "system", "content": GENERIC} and meta == {ERASED_KEY: DETAILED}
    assert erased[1:] == conv[1:] and erased[1]["media"] == [{"modality": "image", "ref": "cat.jpg", "field": "image"}]
