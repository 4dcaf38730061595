"""Bad input gets one clear mmtune error naming file, row and field, or a per-reason skip count.

Every data case puts the bad row on a known JSONL line between good rows, then
checks both modes: ``on_bad_sample: error`` (a one-line DataError that names
``file:line`` and the field) and ``on_bad_sample: skip`` (the good rows kept,
``report.skipped[reason]`` counted, the first location remembered).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_jsonl
from mmtune.config.loader import load_recipe
from mmtune.config.schema import DataConfig, DatasetSpec
from mmtune.data.pipeline import build_text_data
from mmtune.data.templates import install_template
from mmtune.errors import ConfigError, DataError, MmtuneError


def good(i: int) -> dict:
    return {"conversations": [{"from": "human", "value": f"Good question {i}?"},
                              {"from": "gpt", "value": f"Good answer {i}."}]}


def turns(*pairs) -> dict:
    return {"conversations": [{"from": r, "value": v} for r, v in pairs]}


def build(tokenizer, tmp_path: Path, path: Path, fmt: str = "sharegpt", **cfg):
    cfg.setdefault("cache_dir", str(tmp_path / "cache"))
    spec = DatasetSpec(path=str(path), format=fmt)
    return build_text_data(tokenizer, DataConfig(datasets=[spec], **cfg), seed=0)


def assert_one_line(exc: BaseException) -> str:
    assert isinstance(exc, MmtuneError)
    msg = str(exc)
    assert msg and "\n" not in msg
    assert "Traceback" not in msg
    return msg


BAD_LINE = 3  # the bad row's 1-based line in every file below

# (case id, bad row, format, skip reason, text the error message must contain: the field / key and detail)
DATA_CASES = [
    ("malformed-json", '{"conversations": [{"from": "human", "value": "unterminated', "sharegpt",
     "malformed JSON", ["malformed JSON"]),
    ("not-an-object", "[1, 2, 3]", "sharegpt", "malformed JSON", ["JSON object", "list"]),
    ("missing-messages", {"id": "no-conversation"}, "sharegpt", "missing field", ["'conversations'"]),
    ("missing-value", {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "sharegpt",
     "missing field", ["conversations[0].value"]),
    ("missing-role", {"conversations": [{"value": "hi"}, {"from": "gpt", "value": "x"}]}, "sharegpt",
     "missing field", ["conversations[0].from"]),
    ("missing-output", {"instruction": "Do it.", "input": ""}, "alpaca", "missing field", ["'output'"]),
    ("blank-instruction", {"instruction": "   ", "output": "x"}, "alpaca", "missing field", ["'instruction'"]),
    ("missing-response", {"instruction": "Do it.", "context": ""}, "dolly", "missing field", ["'response'"]),
    ("missing-openai-messages", {"conversation": []}, "openai", "missing field", ["'messages'"]),
    ("unknown-role", turns(("human", "hi"), ("bot", "hello")), "sharegpt", "unknown role",
     ["conversations[1].from", "'bot'"]),
    ("unknown-openai-role", {"messages": [{"role": "user", "content": "hi"}, {"role": "model", "content": "x"}]},
     "openai", "unknown role", ["messages[1].role", "'model'"]),
    ("empty-conversation", {"conversations": []}, "sharegpt", "empty conversation", ["'conversations'", "empty"]),
    ("system-only", turns(("system", "Just a system prompt.")), "sharegpt", "empty conversation",
     ["'conversations'"]),
    ("ends-on-user", turns(("human", "a"), ("gpt", "b"), ("human", "c")), "sharegpt", "ends on user turn",
     ["'conversations'", "user turn"]),
    ("not-alternating", turns(("human", "a"), ("human", "b"), ("gpt", "c")), "sharegpt", "roles do not alternate",
     ["'conversations'", "message 1", "'user'", "'assistant'"]),
    ("starts-with-assistant", turns(("gpt", "a"), ("human", "b"), ("gpt", "c")), "sharegpt",
     "roles do not alternate", ["'conversations'", "message 0"]),
    ("wrong-type", turns(("human", 42), ("gpt", "c")), "sharegpt", "wrong field type", ["conversations[0].value"]),
    ("image-part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x.png"}]},
                                 {"role": "assistant", "content": "x"}]}, "openai", "unsupported content",
     ["messages[0].content", "image_url"]),
]


def _good_row(fmt: str, i: int) -> dict:
    if fmt == "alpaca":
        return {"instruction": f"Instruction {i}", "input": "", "output": f"Output {i}"}
    if fmt == "dolly":
        return {"instruction": f"Instruction {i}", "context": "", "response": f"Response {i}"}
    if fmt == "openai":
        return {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": f"A{i}"}]}
    return good(i)


def _answer(fmt: str, i: int) -> str:
    return {"alpaca": f"Output {i}", "dolly": f"Response {i}", "openai": f"A{i}"}.get(fmt, f"Good answer {i}.")


def _file_with_bad_row(tmp_path: Path, bad, fmt: str) -> Path:
    rows = [_good_row(fmt, 1), _good_row(fmt, 2), bad, _good_row(fmt, 4), _good_row(fmt, 5)]
    return write_jsonl(tmp_path / "data" / f"{fmt}.jsonl", rows)


@pytest.mark.parametrize(("bad", "fmt", "reason", "needles"), [c[1:] for c in DATA_CASES],
                         ids=[c[0] for c in DATA_CASES])
def test_bad_row_error_or_skip(tmp_path, tokenizer, bad, fmt, reason, needles):
    path = _file_with_bad_row(tmp_path, bad, fmt)
    # on_bad_sample: error -> one line naming file:line and the field
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path, fmt)
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:{BAD_LINE}: ")
    for needle in needles:
        assert needle in msg
    assert info.value.reason == reason
    # on_bad_sample: skip -> counted under its reason, the good rows kept in order
    data = build(tokenizer, tmp_path, path, fmt, on_bad_sample="skip")
    report = data.reports[0]
    assert report.skipped == {reason: 1}
    assert report.examples[reason] == f"{path}:{BAD_LINE}"
    assert (report.rows, report.samples, len(data.train)) == (5, 4, 4)
    texts = [tokenizer.decode(data.train[k][0].tolist()) for k in range(len(data.train))]
    for i, text in zip((1, 2, 4, 5), texts):
        assert f"{_answer(fmt, i)}<|im_end|>" in text


def test_skip_counts_every_reason_in_one_file(tmp_path, tokenizer):
    rows = [
        good(1),
        "{broken",
        {"id": "x"},
        turns(("human", "a"), ("robot", "b")),
        {"conversations": []},
        turns(("human", "a"), ("gpt", "b"), ("human", "c")),
        turns(("human", "a"), ("human", "b"), ("gpt", "c")),
        good(8),
        "{also broken",
        turns(("human", "a"), ("alien", "b")),
        good(11),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    data = build(tokenizer, tmp_path, path, on_bad_sample="skip")
    report = data.reports[0]
    assert report.skipped == {
        "malformed JSON": 2, "missing field": 1, "unknown role": 2, "empty conversation": 1,
        "ends on user turn": 1, "roles do not alternate": 1,
    }
    assert report.examples["malformed JSON"] == f"{path}:2"  # the first one seen
    assert report.examples["unknown role"] == f"{path}:4"
    assert (report.rows, report.samples, len(data.train)) == (11, 3, 3)


def test_error_mode_stops_at_the_first_bad_row(tmp_path, tokenizer):
    rows = [good(1), turns(("human", "a"), ("robot", "b")), "{broken"]
    path = write_jsonl(tmp_path / "two-bad.jsonl", rows)
    with pytest.raises(DataError, match=r"two-bad\.jsonl:2: .*'robot'"):
        build(tokenizer, tmp_path, path)


def test_line_numbers_count_blank_lines(tmp_path, tokenizer):
    path = tmp_path / "blanks.jsonl"
    import json

    path.write_text("\n".join([json.dumps(good(1)), "", "   ", json.dumps({"id": 1}), json.dumps(good(2))]) + "\n")
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path)
    assert assert_one_line(info.value).startswith(f"{path}:4: ")


def test_bad_row_in_json_list_names_the_row(tmp_path, tokenizer):
    import json

    path = tmp_path / "rows.json"
    path.write_text(json.dumps([good(0), good(1), {"conversations": [{"from": "human", "value": "x"}]}]))
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path)
    msg = assert_one_line(info.value)
    assert str(path) in msg and "row 2" in msg and "'conversations'" in msg


def test_oasst_flat_bad_rows(tmp_path, tokenizer):
    rows = [
        {"message_id": "p", "parent_id": None, "text": "Q", "role": "prompter"},
        {"message_id": "a", "parent_id": "p", "text": "A", "role": "assistant", "rank": 0},
        {"message_id": "b", "parent_id": "p", "text": "B", "role": "moderator", "rank": 1},
        {"message_id": "c", "parent_id": "gone", "text": "C", "role": "assistant", "rank": 0},
    ]
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path, "oasst")
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:3: ") and "'role'" in msg and "'moderator'" in msg
    data = build(tokenizer, tmp_path, path, "oasst", on_bad_sample="skip")
    assert data.reports[0].skipped == {"unknown role": 1, "orphan message": 1}
    assert data.reports[0].examples["orphan message"] == f"{path}:4"
    assert data.reports[0].samples == 1


# --------------------------------------------------------------------------- truncation


def test_long_sample_is_truncated_and_counted_not_an_error(tmp_path, tokenizer):
    long_answer = " ".join(f"word{i}" for i in range(300))
    path = write_jsonl(tmp_path / "long.jsonl", [good(1), turns(("human", "Say a lot."), ("gpt", long_answer)), good(3)])
    data = build(tokenizer, tmp_path, path, max_length=64)
    report = data.reports[0]
    assert (report.samples, report.truncated, report.skipped) == (3, 1, {})
    lengths = data.train.lengths().tolist()
    assert lengths[1] == 64 and lengths[0] < 64 and lengths[2] < 64
    ids, trained = data.train[1]
    assert trained[1:].any() and trained[-1]  # the kept part of the answer is still trained


def test_truncation_boundary_is_exact(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "one.jsonl", [turns(("human", "Count."), ("gpt", "one two three four five six"))])
    full = build(tokenizer, tmp_path, path, max_length=1024)
    n = int(full.train.lengths()[0])
    exact = build(tokenizer, tmp_path, path, max_length=n)
    assert exact.reports[0].truncated == 0 and int(exact.train.lengths()[0]) == n
    cut = build(tokenizer, tmp_path, path, max_length=n - 1)
    assert cut.reports[0].truncated == 1 and int(cut.train.lengths()[0]) == n - 1
    ids_full, _ = full.train[0]
    ids_cut, _ = cut.train[0]
    assert ids_cut.tolist() == ids_full[: n - 1].tolist()  # truncation keeps the start


def _no_trained_token_file(tmp_path: Path) -> Path:
    long_prompt = " ".join(f"word{i}" for i in range(300))
    rows = [good(1), good(2), turns(("human", long_prompt), ("gpt", "Short answer.")), good(4)]
    return write_jsonl(tmp_path / "prompt-too-long.jsonl", rows)


def test_no_trained_token_after_truncation_is_an_error(tmp_path, tokenizer):
    path = _no_trained_token_file(tmp_path)
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path, max_length=64)
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:{BAD_LINE}: ")
    assert "no trained token" in msg and "max_length=64" in msg


def test_no_trained_token_after_truncation_is_skipped(tmp_path, tokenizer):
    path = _no_trained_token_file(tmp_path)
    data = build(tokenizer, tmp_path, path, max_length=64, on_bad_sample="skip")
    report = data.reports[0]
    assert report.skipped == {"no trained token after truncation": 1}
    assert report.examples["no trained token after truncation"] == f"{path}:{BAD_LINE}"
    assert (report.samples, report.truncated, len(data.train)) == (3, 0, 3)


def test_every_row_bad_is_an_error_even_when_skipping(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "all-bad.jsonl", ["{x", {"id": 1}])
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path, on_bad_sample="skip")
    msg = assert_one_line(info.value)
    assert str(path) in msg and "no usable sample" in msg and "malformed JSON" in msg and "missing field" in msg


# --------------------------------------------------------------------------- templates


def test_auto_template_without_chat_template_is_a_config_error(tokenizer):
    tokenizer.chat_template = None
    with pytest.raises(ConfigError) as info:
        install_template(tokenizer, "auto")
    msg = assert_one_line(info.value)
    assert "data.template" in msg and "chatml" in msg
    install_template(tokenizer, "chatml")  # naming a built-in is the fix the message gives
    assert "<|im_start|>" in tokenizer.chat_template


# --------------------------------------------------------------------------- recipes


def write_recipe(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.parametrize(("recipe", "key", "nearest"), [
    ({"train": {"max_step": 3}}, "train.max_step", "train.max_steps"),
    ({"data": {"max_lenght": 128}}, "data.max_lenght", "data.max_length"),
    ({"data": {"datasets": [{"path": "x.jsonl", "formt": "sharegpt"}]}}, "data.datasets.0.formt",
     "data.datasets.0.format"),
    ({"method": {"lora": {"rnak": 8}}}, "method.lora.rnak", "method.lora.rank"),
    ({"modle": {"name": "x"}}, "modle", "model"),
])
def test_unknown_recipe_key_names_file_key_and_nearest(tmp_path, recipe, key, nearest):
    path = write_recipe(tmp_path, recipe)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}: ")
    assert f"'{key}'" in msg and f"'{nearest}'" in msg


def test_unknown_recipe_key_far_from_any_lists_valid_keys(tmp_path):
    path = write_recipe(tmp_path, {"train": {"zzzqqq": 1}})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = assert_one_line(info.value)
    assert "'train.zzzqqq'" in msg and "max_steps" in msg and "micro_batch_size" in msg


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("train", "lr", "fast", "expected a number"),
    ("train", "max_steps", "ten", "expected an integer"),
    ("train", "progress", "maybe", "expected true or false"),
    ("data", "max_length", "long", "expected an integer"),
    ("data", "mixture", "sqr", "expected one of"),
    ("data", "datasets", "mmtune-instruct", "expected a list"),
])
def test_wrong_value_type_names_key_and_expected_type(tmp_path, section, key, value, expected):
    path = write_recipe(tmp_path, {section: {key: value}})
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}: {section}.{key}: ")
    assert expected in msg and repr(value) in msg


def test_override_with_misspelt_key(tmp_path):
    path = write_recipe(tmp_path, {"train": {"max_steps": 2}})
    assert load_recipe(path, ["train.max_steps=3"]).train.max_steps == 3  # the spelt-right control
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["train.max_stepz=3"])
    msg = assert_one_line(info.value)
    assert "'train.max_stepz'" in msg and "'train.max_steps'" in msg
    assert "command-line" in msg or "command line" in msg


def test_override_with_wrong_type(tmp_path):
    path = write_recipe(tmp_path, {"train": {"max_steps": 2}})
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["train.lr=fast"])
    msg = assert_one_line(info.value)
    assert "train.lr" in msg and "expected a number" in msg


@pytest.mark.parametrize("override", ["model.name.sub=1", "model.name.sub.key=1", "train.lr.a.b=1"])
def test_override_into_a_scalar_is_a_config_error(tmp_path, override):
    path = write_recipe(tmp_path, {"model": {"name": "some-model"}, "train": {"lr": 0.001}})
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [override])
    msg = assert_one_line(info.value)
    assert override.partition("=")[0].split(".")[0] in msg


@pytest.mark.parametrize("override", ["train.max_steps", "=3"])
def test_override_without_key_or_equals(tmp_path, override):
    path = write_recipe(tmp_path, {})
    with pytest.raises(ConfigError) as info:
        load_recipe(path, [override])
    assert override in assert_one_line(info.value)


def test_missing_and_invalid_recipe_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_recipe(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in assert_one_line(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(bad)
    msg = assert_one_line(info.value)
    assert str(bad) in msg and "line" in msg


# --------------------------------------------------------------------------- data files and cards


@pytest.mark.parametrize("cache", [True, False])
def test_missing_data_file_names_the_path(tmp_path, tokenizer, cache):
    path = tmp_path / "no" / "such.jsonl"
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path, cache=cache)
    msg = assert_one_line(info.value)
    assert str(path) in msg and "not found" in msg


def test_missing_data_file_of_a_card(tmp_path, tokenizer):
    card = tmp_path / "cards" / "lost.yaml"
    card.parent.mkdir()
    card.write_text("format: sharegpt\npath: lost.jsonl\n")
    cfg = DataConfig(datasets=[DatasetSpec(card=str(card))], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        build_text_data(tokenizer, cfg, seed=0)
    assert str(tmp_path / "cards" / "lost.jsonl") in assert_one_line(info.value)


def test_unsupported_file_type(tmp_path, tokenizer):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        build(tokenizer, tmp_path, path)
    msg = assert_one_line(info.value)
    assert str(path) in msg and ".csv" in msg


def test_unknown_card_name(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(datasets=[DatasetSpec(card="mmtune-instrcut")], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as info:
        build_text_data(tokenizer, cfg, seed=0)
    msg = assert_one_line(info.value)
    assert "'mmtune-instrcut'" in msg and "data.datasets" in msg
    assert str(REPO / "datasets" / "mmtune-instrcut.yaml") in msg  # where it looked


def test_missing_card_file(tmp_path, tokenizer):
    card = tmp_path / "nope.yaml"
    cfg = DataConfig(datasets=[DatasetSpec(card=str(card))], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as info:
        build_text_data(tokenizer, cfg, seed=0)
    assert str(card) in assert_one_line(info.value)


@pytest.mark.parametrize(("card_text", "needles"), [
    ("format: sharegpt\npath: d.jsonl\nformta: x\n", ["formta"]),
    ("path: d.jsonl\n", ["format"]),
    ("format: sharegpt\n", ["path", "hub"]),
    ("format: sharegpt\npath: d.jsonl\ncolumns: {mesages: conversations}\n", ["mesages", "messages"]),
    ("format: sharegpt\npath: d.jsonl\nroles: {bot: gpt}\n", ["bot", "assistant"]),
    ("format: sharegtp\npath: d.jsonl\n", ["sharegtp", "format"]),
])
def test_bad_card_is_a_config_error(tmp_path, tokenizer, card_text, needles):
    write_jsonl(tmp_path / "d.jsonl", [good(1)])
    card = tmp_path / "card.yaml"
    card.write_text(card_text)
    cfg = DataConfig(datasets=[DatasetSpec(card=str(card))], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as info:
        build_text_data(tokenizer, cfg, seed=0)
    msg = assert_one_line(info.value)
    assert "card" in msg or str(card) in msg
    for needle in needles:
        assert needle in msg


def test_unknown_inline_column_field(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1)])
    spec = DatasetSpec(path=str(path), format="sharegpt", columns={"speaker": "from"})
    with pytest.raises(ConfigError) as info:
        build_text_data(tokenizer, DataConfig(datasets=[spec], cache_dir=str(tmp_path / "c")), seed=0)
    msg = assert_one_line(info.value)
    assert str(path) in msg and "speaker" in msg and "role" in msg


# --------------------------------------------------------------------------- the CLI


def screen_lines(text: str) -> list[str]:
    """Non-empty lines as a terminal shows them (a carriage return rewinds the line)."""
    lines = []
    for raw in text.split("\n"):
        buf: list[str] = []
        pos = 0
        for ch in raw:
            if ch == "\r":
                pos = 0
                continue
            if pos < len(buf):
                buf[pos] = ch
            else:
                buf.append(ch)
            pos += 1
        line = "".join(buf).rstrip()
        if line:
            lines.append(line)
    return lines


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def assert_cli_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = screen_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mmtune: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize(("recipe", "overrides", "needles"), [
    ({"train": {"max_step": 3}}, [], ["train.max_step", "train.max_steps"]),
    ({"train": {"max_steps": 3}}, ["train.max_stepz=3"], ["train.max_stepz", "train.max_steps"]),
])
def test_cli_train_prints_one_line_and_exits_2(tmp_path, recipe, overrides, needles):
    path = write_recipe(tmp_path, recipe, "bad.yaml")
    proc = run_cli("train", str(path), *overrides, cwd=tmp_path)
    assert_cli_error(proc, str(path), *needles)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cli_data_error_is_one_line(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [good(1), "{oops"])
    recipe = write_recipe(tmp_path, {
        "data": {"datasets": [{"path": str(data), "format": "sharegpt"}], "cache_dir": str(tmp_path / "cache")},
    })
    proc = run_cli("data", "inspect", str(recipe), cwd=tmp_path)
    assert_cli_error(proc, f"{data}:2: ", "malformed JSON")
