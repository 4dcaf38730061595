"""Bad input gets one clear mmtune error naming file, row and field, or a per-reason skip count.

Every data case puts the bad row on a known JSONL line between good rows, then
checks both modes: ``on_bad_sample: error`` (a one-line DataError that names
``file:line`` and the field) and ``on_bad_sample: skip`` (the good rows kept,
``report.skipped[reason]`` counted, the first location remembered).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_jsonl
from mmtune.config.loader import load_recipe
from mmtune.config.schema import DataConfig, DatasetSpec
from mmtune.data.pipeline import SourceReport, build_conversation_data, conversations_of
from mmtune.data.sources import resolve_source
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
    return build_conversation_data(tokenizer, DataConfig(datasets=[spec], **cfg), seed=0)


def read_rows(spec: DatasetSpec, on_bad: str = "error") -> tuple[list, SourceReport]:
    """What build_conversation_data does with an entry before tokenizing: resolve it, read and convert every row.

    The per-row checks live here, so most cases need no tokenizer; the end-to-end
    tests below go through build_conversation_data.
    """
    src = resolve_source(spec)
    report = SourceReport(src.name)
    return [conv for _, conv in conversations_of(src, report, on_bad)], report


def read_source(spec: DatasetSpec) -> list:
    return read_rows(spec)[0]


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
def test_bad_row_error_or_skip(tmp_path, bad, fmt, reason, needles):
    path = _file_with_bad_row(tmp_path, bad, fmt)
    spec = DatasetSpec(path=str(path), format=fmt)
    # on_bad_sample: error -> one line naming file:line and the field
    with pytest.raises(DataError) as info:
        read_rows(spec, "error")
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:{BAD_LINE}: ")
    for needle in needles:
        assert needle in msg
    assert info.value.reason == reason
    # on_bad_sample: skip -> counted under its reason, the good rows kept in order
    convs, report = read_rows(spec, "skip")
    assert report.skipped == {reason: 1}
    assert report.examples[reason] == f"{path}:{BAD_LINE}"
    assert report.rows == 5
    assert [conv[-1]["content"] for conv in convs] == [_answer(fmt, i) for i in (1, 2, 4, 5)]


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


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "blanks.jsonl"
    path.write_text("\n".join([json.dumps(good(1)), "", "   ", json.dumps({"id": 1}), json.dumps(good(2))]) + "\n")
    with pytest.raises(DataError) as info:
        read_rows(DatasetSpec(path=str(path), format="sharegpt"))
    assert assert_one_line(info.value).startswith(f"{path}:4: ")


def test_invalid_utf8_is_one_line_naming_file_and_line_or_a_counted_skip(tmp_path, tokenizer):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(good(0)).encode(), json.dumps(good(1), ensure_ascii=False).replace("answer", "caf\u00e9").encode("latin-1"),
             json.dumps(good(2)).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as info:
        read_rows(DatasetSpec(path=str(path), format="sharegpt"))
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:2: not valid UTF-8") and info.value.reason == "invalid UTF-8"
    data = build(tokenizer, tmp_path, path, on_bad_sample="skip")
    report = data.reports[0]
    assert report.samples == 2 and report.skipped == {"invalid UTF-8": 1}
    assert report.examples["invalid UTF-8"] == f"{path}:2"
    whole = tmp_path / "latin1.json"
    whole.write_bytes(b"[" + b",\n".join(lines) + b"]")
    with pytest.raises(DataError) as info:
        read_rows(DatasetSpec(path=str(whole), format="sharegpt"))
    assert assert_one_line(info.value).startswith(f"{whole}:2: not valid UTF-8")


def test_bad_row_in_json_list_names_the_row(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([good(0), good(1), {"conversations": [{"from": "human", "value": "x"}]}]))
    with pytest.raises(DataError) as info:
        read_rows(DatasetSpec(path=str(path), format="sharegpt"))
    msg = assert_one_line(info.value)
    assert str(path) in msg and "row 3" in msg and "'conversations'" in msg  # rows count from 1


def test_oasst_flat_bad_rows(tmp_path):
    rows = [
        {"message_id": "p", "parent_id": None, "text": "Q", "role": "prompter"},
        {"message_id": "a", "parent_id": "p", "text": "A", "role": "assistant", "rank": 0},
        {"message_id": "b", "parent_id": "p", "text": "B", "role": "moderator", "rank": 1},
        {"message_id": "c", "parent_id": "gone", "text": "C", "role": "assistant", "rank": 0},
    ]
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    spec = DatasetSpec(path=str(path), format="oasst")
    with pytest.raises(DataError) as info:
        read_rows(spec)
    msg = assert_one_line(info.value)
    assert msg.startswith(f"{path}:3: ") and "'role'" in msg and "'moderator'" in msg
    convs, report = read_rows(spec, "skip")
    assert report.skipped == {"unknown role": 1, "orphan message": 1}
    assert report.examples["orphan message"] == f"{path}:4"
    assert convs == [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]


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
    assert (report.rows, report.samples, len(data.train)) == (4, 3, 3)


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
    assert f"'{override.partition('=')[0]}'" in msg and "command line" in msg


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


def test_missing_data_file_names_the_path(tmp_path, tokenizer):
    path = tmp_path / "no" / "such.jsonl"
    for cache in (True, False):
        with pytest.raises(DataError) as info:
            build(tokenizer, tmp_path, path, cache=cache)
        msg = assert_one_line(info.value)
        assert str(path) in msg and "not found" in msg


def test_missing_data_file_of_a_card(tmp_path):
    card = tmp_path / "cards" / "lost.yaml"
    card.parent.mkdir()
    card.write_text("format: sharegpt\npath: lost.jsonl\n")
    with pytest.raises(DataError) as info:
        read_source(DatasetSpec(card=str(card)))
    assert str(tmp_path / "cards" / "lost.jsonl") in assert_one_line(info.value)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        read_source(DatasetSpec(path=str(path), format="sharegpt"))
    msg = assert_one_line(info.value)
    assert str(path) in msg and ".csv" in msg


def test_unknown_card_name(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = DataConfig(datasets=[DatasetSpec(card="mmtune-instrcut")], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as info:
        build_conversation_data(tokenizer, cfg, seed=0)
    msg = assert_one_line(info.value)
    assert "'mmtune-instrcut'" in msg and "data.datasets" in msg
    assert str(REPO / "datasets" / "mmtune-instrcut.yaml") in msg  # where it looked


def test_missing_card_file(tmp_path):
    card = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        read_source(DatasetSpec(card=str(card)))
    assert str(card) in assert_one_line(info.value)


@pytest.mark.parametrize(("card_text", "needles"), [
    ("format: sharegpt\npath: d.jsonl\nformta: x\n", ["formta"]),
    ("path: d.jsonl\n", ["format"]),
    ("format: sharegpt\n", ["path", "hub"]),
    ("format: sharegpt\npath: d.jsonl\ncolumns: {mesages: conversations}\n", ["mesages", "messages"]),
    ("format: sharegpt\npath: d.jsonl\nroles: {bot: gpt}\n", ["bot", "assistant"]),
    ("format: sharegtp\npath: d.jsonl\n", ["sharegtp", "format"]),
], ids=["unknown-key", "no-format", "no-path", "bad-column", "bad-role", "bad-format"])
def test_bad_card_is_a_config_error(tmp_path, card_text, needles):
    write_jsonl(tmp_path / "d.jsonl", [good(1)])
    card = tmp_path / "card.yaml"
    card.write_text(card_text)
    read_source(DatasetSpec(path=str(tmp_path / "d.jsonl"), format="sharegpt"))  # the data itself is fine
    with pytest.raises(ConfigError) as info:
        read_source(DatasetSpec(card=str(card)))
    msg = assert_one_line(info.value)
    assert str(card) in msg or "'card'" in msg
    for needle in needles:
        assert needle in msg


def test_unknown_inline_column_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [good(1)])
    with pytest.raises(ConfigError) as info:
        read_source(DatasetSpec(path=str(path), format="sharegpt", columns={"speaker": "from"}))
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


# (recipe, overrides, where the error must point, what it must name)
CLI_TRAIN_CASES = {
    "unknown-key": ({"train": {"max_step": 3}}, [], "bad.yaml", ["train.max_step", "train.max_steps"]),
    "misspelt-override": ({"train": {"max_steps": 3}}, ["train.max_stepz=3"], "command line",
                          ["train.max_stepz", "train.max_steps"]),
}


class CliRun:
    """A ``python -m mmtune.cli`` run started in the background; ``result()`` waits for it."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.cwd = cwd
        self._err = open(cwd / "stderr.txt", "w+", encoding="utf-8")
        self._proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", *args], cwd=cwd,
                                      stdout=subprocess.DEVNULL, stderr=self._err, text=True)

    def result(self) -> tuple[int, str]:
        code = self._proc.wait(timeout=180)
        self._err.seek(0)
        return code, self._err.read()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._err.close()


@pytest.fixture(scope="module", autouse=True)
def cli_runs(tmp_path_factory, smol_dir):
    """Start every CLI run when the module starts, so the slow interpreter start-ups overlap the other tests."""
    runs = {}
    for name, (recipe, overrides, _, _) in CLI_TRAIN_CASES.items():
        d = tmp_path_factory.mktemp(f"cli-{name}")
        runs[name] = CliRun(["train", str(write_recipe(d, recipe, "bad.yaml")), *overrides], d)
    d = tmp_path_factory.mktemp("cli-data")
    data = write_jsonl(d / "d.jsonl", [good(1), "{oops"])
    recipe = write_recipe(d, {
        "data": {"datasets": [{"path": str(data), "format": "sharegpt"}], "cache_dir": str(d / "cache")},
    })
    runs["data-inspect"] = CliRun(["data", "inspect", str(recipe)], d)
    yield runs
    for run in runs.values():
        run.close()


def assert_cli_error(code: int, stderr: str, *needles: str) -> str:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = screen_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mmtune: error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(CLI_TRAIN_CASES))
def test_cli_train_prints_one_line_and_exits_2(cli_runs, case):
    run = cli_runs[case]
    code, stderr = run.result()
    _, _, source, needles = CLI_TRAIN_CASES[case]
    where = str(run.cwd / source) if source.endswith(".yaml") else source
    assert_cli_error(code, stderr, where, *needles)
    assert not (run.cwd / "runs").exists()  # nothing was started


def test_cli_data_error_is_one_line(cli_runs):
    run = cli_runs["data-inspect"]
    code, stderr = run.result()
    assert_cli_error(code, stderr, f"{run.cwd / 'd.jsonl'}:2: ", "malformed JSON")
