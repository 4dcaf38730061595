"""Format conversion, dataset cards, mixtures, file types and the tokenized cache.

Expected conversations are written out by hand from the rows; token-level checks
compare against ``tokenizer.apply_chat_template`` on those hand-written
conversations, so a wrong role, order or join shows up as a mismatch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jsonl
from mmtune.config.schema import DataConfig, DatasetSpec
from mmtune.data.pipeline import SourceReport, build_conversation_data, conversations_of, mixture_counts
from mmtune.data.sources import resolve_source
from mmtune.data.templates import install_template


# --------------------------------------------------------------------------- helpers


def read_convs(spec: DatasetSpec) -> list[list[dict]]:
    """Conversations the pipeline produces for one dataset entry (error mode)."""
    src = resolve_source(spec)
    return [conv for _, conv in conversations_of(src, SourceReport(src.name), "error")]


def build(tokenizer, tmp_path: Path, datasets: list, **cfg):
    cfg.setdefault("cache_dir", str(tmp_path / "cache"))
    return build_conversation_data(tokenizer, DataConfig(datasets=datasets, **cfg), seed=0)


def samples(view) -> list[tuple[int, ...]]:
    return [tuple(int(t) for t in view[k][0]) for k in range(len(view))]


def rendered(tokenizer, conv) -> str:
    return tokenizer.apply_chat_template(conv, tokenize=False)


def U(text):  # noqa: N802 - tiny message constructors keep the expected values readable
    return {"role": "user", "content": text}


def A(text):  # noqa: N802
    return {"role": "assistant", "content": text}


def S(text):  # noqa: N802
    return {"role": "system", "content": text}


def qa_rows(prefix: str, n: int) -> list[dict]:
    """``n`` distinct sharegpt rows."""
    return [
        {"conversations": [{"from": "human", "value": f"{prefix} question number {i}?"},
                           {"from": "gpt", "value": f"{prefix} answer number {i}."}]}
        for i in range(n)
    ]


# --------------------------------------------------------------------------- alpaca


def test_alpaca_instruction_input_output(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a prime.", "input": "", "output": "Seven."},
        {"instruction": "Name a colour.", "output": "Blue."},  # no input column at all
    ])
    assert read_convs(DatasetSpec(path=str(path), format="alpaca")) == [
        [U("Translate to French.\n\nGood morning"), A("Bonjour")],
        [U("Name a prime."), A("Seven.")],
        [U("Name a colour."), A("Blue.")],
    ]


def test_alpaca_system_and_history_become_multi_turn(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "And times 3?", "input": "", "output": "6 times 3 is 18.", "system": "You do maths.",
         "history": [["What is 2 + 4?", "6."], ["Is that even?", "Yes."]]},
        {"instruction": "Hi", "output": "Hello!", "system": "", "history": []},
    ])
    assert read_convs(DatasetSpec(path=str(path), format="alpaca")) == [
        [S("You do maths."), U("What is 2 + 4?"), A("6."), U("Is that even?"), A("Yes."),
         U("And times 3?"), A("6 times 3 is 18.")],
        [U("Hi"), A("Hello!")],
    ]


def test_alpaca_multi_turn_tokens_and_trained_spans(tmp_path, tokenizer):
    row = {"instruction": "And times 3?", "output": "18.", "system": "Be brief.", "history": [["2 + 4?", "6."]]}
    path = write_jsonl(tmp_path / "a.jsonl", [row])
    data = build(tokenizer, tmp_path, [DatasetSpec(path=str(path), format="alpaca")])
    ids, trained = data.train[0]
    conv = [S("Be brief."), U("2 + 4?"), A("6."), U("And times 3?"), A("18.")]
    assert tokenizer.decode(ids.tolist()) == rendered(tokenizer, conv)
    # Only the two answers (with their end-of-turn) are trained: two separate spans, no prompt text.
    spans, start = [], None
    for i, flag in enumerate([*trained.tolist(), False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append(tokenizer.decode(ids[start:i].tolist()).strip())
            start = None
    assert spans == ["6.<|im_end|>", "18.<|im_end|>"]


# --------------------------------------------------------------------------- sharegpt / vicuna / openai / dolly


@pytest.mark.parametrize("fmt", ["sharegpt", "vicuna"])
def test_sharegpt_and_vicuna(tmp_path, fmt):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                           {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Goodbye"}]},
        {"system": "Be terse.", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"conversations": [{"from": "system", "value": "From the message."},
                           {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ])
    assert read_convs(DatasetSpec(path=str(path), format=fmt)) == [
        [U("Hi"), A("Hello"), U("Bye"), A("Goodbye")],
        [S("Be terse."), U("2+2?"), A("4")],
        [S("From the message."), U("Q"), A("A")],
    ]


def test_sharegpt_system_message_wins_over_system_column(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"system": "column system", "conversations": [
            {"from": "system", "value": "message system"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
    ])
    convs = read_convs(DatasetSpec(path=str(path), format="sharegpt"))
    assert convs == [[S("message system"), U("Q"), A("A")]]


def test_openai_messages_with_string_and_text_part_content(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "o.jsonl", [
        {"messages": [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Hello"},
                      {"role": "assistant", "content": "Hi there"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Part one, "},
                                                   {"type": "text", "text": "part two."}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "Joined."}]}]},
    ])
    expected = [
        [S("Sys."), U("Hello"), A("Hi there")],
        [U("Part one, part two."), A("Joined.")],
    ]
    spec = DatasetSpec(path=str(path), format="openai")
    assert read_convs(spec) == expected
    data = build(tokenizer, tmp_path, [spec])
    assert [tokenizer.decode(list(s)) for s in samples(data.train)] == [rendered(tokenizer, c) for c in expected]


def test_dolly(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
        {"instruction": "Tell a joke.", "context": "", "response": "No.", "category": "open_qa"},
    ])
    assert read_convs(DatasetSpec(path=str(path), format="dolly")) == [
        [U("Summarise.\n\nA long text."), A("Short.")],
        [U("Tell a joke."), A("No.")],
    ]


# --------------------------------------------------------------------------- OASST

# A hand-made tree, branching at the root (two answers) and at the follow-up
# (three answers, one unranked):
#
#   p1 "How do I boil an egg?"
#   |- a1 rank 1 "Put it in water."                         (leaf)
#   '- a2 rank 0 "Simmer it for 8 minutes."
#       '- p2 "And for a soft yolk?"
#           |- a3 rank 10 "Three minutes."
#           |- a4 rank 2  "Six minutes."
#           '- a5 unranked "Ask a chef."
#
# plus a second, single-turn tree. Rows are deliberately not in parent-first order.
OASST_FLAT = [
    {"message_id": "a4", "parent_id": "p2", "text": "Six minutes.", "role": "assistant", "rank": 2},
    {"message_id": "p1", "parent_id": None, "text": "How do I boil an egg?", "role": "prompter", "rank": None},
    {"message_id": "a1", "parent_id": "p1", "text": "Put it in water.", "role": "assistant", "rank": 1},
    {"message_id": "a3", "parent_id": "p2", "text": "Three minutes.", "role": "assistant", "rank": 10},
    {"message_id": "p2", "parent_id": "a2", "text": "And for a soft yolk?", "role": "prompter", "rank": None},
    {"message_id": "a2", "parent_id": "p1", "text": "Simmer it for 8 minutes.", "role": "assistant", "rank": 0},
    {"message_id": "a5", "parent_id": "p2", "text": "Ask a chef.", "role": "assistant", "rank": None},
    {"message_id": "q1", "parent_id": None, "text": "Capital of Peru?", "role": "prompter", "rank": None},
    {"message_id": "b1", "parent_id": "q1", "text": "Lima.", "role": "assistant", "rank": 0},
]
EGG = [U("How do I boil an egg?")]
EGG_FOLLOW = [*EGG, A("Simmer it for 8 minutes."), U("And for a soft yolk?")]
ALL_THREADS = [
    [*EGG, A("Put it in water.")],
    [*EGG_FOLLOW, A("Three minutes.")],
    [*EGG_FOLLOW, A("Six minutes.")],
    [*EGG_FOLLOW, A("Ask a chef.")],
    [U("Capital of Peru?"), A("Lima.")],
]
BEST_THREADS = [
    [*EGG_FOLLOW, A("Six minutes.")],
    [U("Capital of Peru?"), A("Lima.")],
]
OASST_NESTED = [
    {"prompt": {"text": "How do I boil an egg?", "role": "prompter", "replies": [
        {"text": "Put it in water.", "role": "assistant", "rank": 1, "replies": []},
        {"text": "Simmer it for 8 minutes.", "role": "assistant", "rank": 0, "replies": [
            {"text": "And for a soft yolk?", "role": "prompter", "replies": [
                {"text": "Three minutes.", "role": "assistant", "rank": 10},
                {"text": "Six minutes.", "role": "assistant", "rank": 2},
                {"text": "Ask a chef.", "role": "assistant"},
            ]},
        ]},
    ]}},
    {"prompt": {"text": "Capital of Peru?", "role": "prompter", "replies": [
        {"text": "Lima.", "role": "assistant", "rank": 0},
    ]}},
]


def _sorted(convs):
    return sorted(convs, key=lambda c: json.dumps(c))


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_oasst_all_root_to_leaf_threads(tmp_path, layout):
    rows = OASST_FLAT if layout == "flat" else OASST_NESTED
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    convs = read_convs(DatasetSpec(path=str(path), format="oasst"))
    assert len(convs) == len(ALL_THREADS)
    assert _sorted(convs) == _sorted(ALL_THREADS)


@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_oasst_best_path_only_follows_lowest_rank(tmp_path, layout):
    rows = OASST_FLAT if layout == "flat" else OASST_NESTED
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    convs = read_convs(DatasetSpec(path=str(path), format="oasst", oasst_best_path_only=True))
    assert _sorted(convs) == _sorted(BEST_THREADS)


def test_oasst_threads_end_on_assistant_and_drop_prompter_leaves(tmp_path):
    rows = [
        {"message_id": "p", "parent_id": None, "text": "Q1", "role": "prompter", "rank": None},
        {"message_id": "a", "parent_id": "p", "text": "A1", "role": "assistant", "rank": 0},
        {"message_id": "p2", "parent_id": "a", "text": "unanswered follow-up", "role": "prompter", "rank": None},
        {"message_id": "x", "parent_id": None, "text": "never answered", "role": "prompter", "rank": None},
    ]
    path = write_jsonl(tmp_path / "oasst.jsonl", rows)
    convs = read_convs(DatasetSpec(path=str(path), format="oasst"))
    # The only root-to-leaf paths end on prompter messages: nothing to train on.
    assert convs == []
    rows.append({"message_id": "a2", "parent_id": "p2", "text": "A2", "role": "assistant", "rank": 0})
    write_jsonl(path, rows)
    assert read_convs(DatasetSpec(path=str(path), format="oasst")) == [[U("Q1"), A("A1"), U("unanswered follow-up"), A("A2")]]


def test_oasst_best_path_via_card_tokenizes_one_sample_per_tree(tmp_path, tokenizer):
    write_jsonl(tmp_path / "cards" / "oasst.jsonl", OASST_FLAT)
    card = tmp_path / "cards" / "egg.yaml"
    card.write_text("format: oasst\npath: oasst.jsonl\noasst_best_path_only: true\n")
    data = build(tokenizer, tmp_path, [DatasetSpec(card=str(card))])
    assert data.reports[0].samples == len(BEST_THREADS)
    assert _sorted(tokenizer.decode(list(s)) for s in samples(data.train)) == _sorted(
        rendered(tokenizer, c) for c in BEST_THREADS)
    full = build(tokenizer, tmp_path, [DatasetSpec(path=str(tmp_path / "cards" / "oasst.jsonl"), format="oasst")])
    assert full.reports[0].samples == len(ALL_THREADS)


# --------------------------------------------------------------------------- columns / roles / cards

CUSTOM_ROWS = [
    {"messages": [{"speaker": "me", "text": "Ping?"}, {"speaker": "bot", "text": "Pong."}]},
    {"messages": [{"speaker": "narrator", "text": "Be kind."}, {"speaker": "me", "text": "Hi"},
                  {"speaker": "bot", "text": "Hello, friend."}]},
]
CUSTOM_EXPECTED = [[U("Ping?"), A("Pong.")], [S("Be kind."), U("Hi"), A("Hello, friend.")]]
CUSTOM_COLUMNS = {"messages": "messages", "role": "speaker", "content": "text"}
CUSTOM_ROLES = {"user": "me", "assistant": "bot", "system": "narrator"}


def test_inline_columns_and_roles(tmp_path):
    path = write_jsonl(tmp_path / "custom.jsonl", CUSTOM_ROWS)
    spec = DatasetSpec(path=str(path), format="sharegpt", columns=CUSTOM_COLUMNS, roles=CUSTOM_ROLES)
    assert read_convs(spec) == CUSTOM_EXPECTED


def test_card_file_with_relative_path_columns_and_roles(tmp_path, tokenizer, monkeypatch):
    write_jsonl(tmp_path / "cards" / "data" / "custom.jsonl", CUSTOM_ROWS)
    card = tmp_path / "cards" / "my-chat.yaml"
    card.write_text(
        "description: a chat file with its own column and role names\n"
        "license: CC0-1.0\n"
        "path: data/custom.jsonl\n"
        "format: sharegpt\n"
        "columns:\n  messages: messages\n  role: speaker\n  content: text\n"
        "roles:\n  user: me\n  assistant: bot\n  system: narrator\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data path is relative to the card, not to the working directory
    spec = DatasetSpec(card=str(card))
    assert read_convs(spec) == CUSTOM_EXPECTED
    data = build(tokenizer, tmp_path, [spec])
    assert data.reports[0].name == "my-chat"
    assert [tokenizer.decode(list(s)) for s in samples(data.train)] == [rendered(tokenizer, c) for c in CUSTOM_EXPECTED]


def test_recipe_entry_overrides_card_roles(tmp_path):
    rows = [{"messages": [{"speaker": "me", "text": "Ping?"}, {"speaker": "robot", "text": "Pong."}]}]
    write_jsonl(tmp_path / "cards" / "c.jsonl", rows)
    card = tmp_path / "cards" / "c.yaml"
    card.write_text("path: c.jsonl\nformat: sharegpt\ncolumns: {messages: messages, role: speaker, content: text}\n"
                    "roles: {user: me, assistant: bot}\n")
    spec = DatasetSpec(card=str(card), roles={"assistant": "robot"})
    assert read_convs(spec) == [[U("Ping?"), A("Pong.")]]


def test_card_found_by_name_in_working_directory_datasets(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "datasets" / "mine" / "rows.jsonl", CUSTOM_ROWS)
    (tmp_path / "datasets" / "mine.yaml").write_text(
        "path: mine/rows.jsonl\nformat: sharegpt\n"
        "columns: {messages: messages, role: speaker, content: text}\n"
        "roles: {user: me, assistant: bot, system: narrator}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert read_convs(DatasetSpec(card="mine")) == CUSTOM_EXPECTED


def test_repo_card_by_name(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found through the checkout's datasets/ folder, whatever the cwd
    data = build(tokenizer, tmp_path, [DatasetSpec(card="mmtune-instruct")], val_fraction=0.1)
    assert len(data.train) + len(data.val) == 300
    assert len(data.val) == 30
    report = data.reports[0]
    assert (report.rows, report.samples, report.skipped) == (300, 300, {})
    assert report.name == "mmtune-instruct"


# --------------------------------------------------------------------------- mixtures


def test_mixture_counts_concat_ignores_weights():
    assert mixture_counts([7, 3, 11], [1.0, 5.0, 0.5], "concat", None) == [7, 3, 11]
    assert mixture_counts([7, 3, 11], [1.0, 5.0, 0.5], "concat", 1000) == [7, 3, 11]


@pytest.mark.parametrize(("sizes", "weights", "total"), [
    ([10, 10], [1.0, 3.0], None),
    ([50, 30, 20], [1.0, 1.0, 2.0], 1000),
    ([5, 8, 13], [0.3, 0.3, 0.4], 7),
])
def test_mixture_counts_weighted(sizes, weights, total):
    n = total if total is not None else sum(sizes)
    counts = mixture_counts(sizes, weights, "weighted", total)
    exact = [w / sum(weights) * n for w in weights]
    assert sum(counts) == n
    assert all(math.floor(e) <= c <= math.ceil(e) for c, e in zip(counts, exact))
    if all(float(e).is_integer() for e in exact):
        assert counts == [int(e) for e in exact]


def test_mixture_counts_weighted_exact():
    assert mixture_counts([10, 10], [1.0, 3.0], "weighted", None) == [5, 15]
    assert mixture_counts([1, 1000], [1.0, 1.0], "weighted", 10) == [5, 5]


@pytest.mark.parametrize(("sizes", "weights", "total"), [
    ([100, 400], [1.0, 1.0], None),
    ([100, 400], [1.0, 1.0], 300),
    ([9, 16, 25], [1.0, 1.0, 1.0], 120),
    ([100, 400], [2.0, 1.0], 90),
])
def test_mixture_counts_sqrt(sizes, weights, total):
    n = total if total is not None else sum(sizes)
    scores = [w * math.sqrt(s) for w, s in zip(weights, sizes)]
    exact = [sc / sum(scores) * n for sc in scores]
    counts = mixture_counts(sizes, weights, "sqrt", total)
    assert sum(counts) == n
    assert all(math.floor(e) <= c <= math.ceil(e) for c, e in zip(counts, exact))
    # Largest remainder: a dataset rounded up never has a smaller fractional part than one rounded down.
    ups = [e - math.floor(e) for c, e in zip(counts, exact) if c > e]
    downs = [e - math.floor(e) for c, e in zip(counts, exact) if c < e]
    assert not ups or not downs or min(ups) >= max(downs)
    if all(abs(e - round(e)) < 1e-9 for e in exact):
        assert counts == [round(e) for e in exact]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 50.0])
def test_mixture_counts_temperature(temperature):
    """p_d ~ size_d ** (1/T): T = 1 keeps sizes' proportions, T = 2 equals sqrt, large T nears uniform."""
    sizes = [100, 400, 1600]
    counts = mixture_counts(sizes, [1.0] * 3, "temperature", 2100, temperature=temperature)
    exact = [s ** (1 / temperature) for s in sizes]
    exact = [e / sum(exact) * 2100 for e in exact]
    assert sum(counts) == 2100 and all(abs(c - e) <= 1 for c, e in zip(counts, exact))
    if temperature == 1.0:
        assert counts == sizes
    if temperature == 2.0:
        assert counts == mixture_counts(sizes, [1.0] * 3, "sqrt", 2100)
    if temperature == 50.0:
        assert max(counts) - min(counts) < 0.1 * 700


def test_mixture_counts_sqrt_100_400():
    # sqrt(100) : sqrt(400) = 1 : 2; 500 * 1/3 = 166.67, 500 * 2/3 = 333.33
    assert mixture_counts([100, 400], [1.0, 1.0], "sqrt", None) == [167, 333]
    assert mixture_counts([100, 400], [1.0, 1.0], "sqrt", 300) == [100, 200]


@pytest.mark.parametrize("mixture_size", [None, 8])
def test_weighted_mixture_per_dataset_counts(tmp_path, tokenizer, mixture_size):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 20))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 20))
    data = build(tokenizer, tmp_path, [
        DatasetSpec(path=str(a), format="sharegpt", weight=1),
        DatasetSpec(path=str(b), format="sharegpt", weight=3),
    ], mixture="weighted", mixture_size=mixture_size)
    n = mixture_size if mixture_size is not None else 40
    per_dataset = np.bincount(data.train.refs[:, 0], minlength=2).tolist()
    assert per_dataset == [n * 1 // 4, n * 3 // 4]
    assert len(data.train) == n
    # Decoded samples really come from the dataset the refs say.
    for k in range(len(data.train)):
        text = tokenizer.decode(data.train[k][0].tolist())
        assert ("alpha" if data.train.refs[k, 0] == 0 else "beta") in text
    if mixture_size is None:
        # 30 draws from 20 beta samples: one full pass plus 10, never a sample three times or left out.
        beta = np.bincount(data.train.refs[data.train.refs[:, 0] == 1, 1], minlength=20)
        assert beta.min() >= 1 and beta.max() <= 2


def test_sqrt_mixture_through_pipeline(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 4))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 16))
    data = build(tokenizer, tmp_path, [
        DatasetSpec(path=str(a), format="sharegpt"), DatasetSpec(path=str(b), format="sharegpt"),
    ], mixture="sqrt", mixture_size=30)
    # p ~ sqrt(4) : sqrt(16) = 2 : 4 -> 10 and 20 of 30
    assert np.bincount(data.train.refs[:, 0], minlength=2).tolist() == [10, 20]


def test_temperature_mixture_through_pipeline(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 4))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 64))
    data = build(tokenizer, tmp_path, [
        DatasetSpec(path=str(a), format="sharegpt"), DatasetSpec(path=str(b), format="sharegpt"),
    ], mixture="temperature", mixture_temperature=4.0, mixture_size=30)
    # p ~ 4 ** (1/4) : 64 ** (1/4) = 1 : 2 -> 10 and 20 of 30
    assert np.bincount(data.train.refs[:, 0], minlength=2).tolist() == [10, 20]


def test_concat_mixture_uses_every_sample_once(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 5))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 7))
    data = build(tokenizer, tmp_path, [
        DatasetSpec(path=str(a), format="sharegpt", weight=5), DatasetSpec(path=str(b), format="sharegpt"),
    ])
    assert len(data.train) == 12 and len(data.val) == 0
    assert len(set(samples(data.train))) == 12


@pytest.mark.parametrize("mixture", ["concat", "weighted"])
def test_val_fraction_splits_without_overlap(tmp_path, tokenizer, mixture):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 40))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows("beta", 20))
    data = build(tokenizer, tmp_path, [
        DatasetSpec(path=str(a), format="sharegpt"), DatasetSpec(path=str(b), format="sharegpt", weight=2),
    ], val_fraction=0.25, mixture=mixture)
    assert np.bincount(data.val.refs[:, 0], minlength=2).tolist() == [10, 5]
    train, val = set(samples(data.train)), set(samples(data.val))
    assert len(val) == 15  # distinct samples
    assert not train & val
    if mixture == "concat":
        assert len(data.train) == 45
        # Together they are the whole data, each sample exactly once.
        full = build(tokenizer, tmp_path, [
            DatasetSpec(path=str(a), format="sharegpt"), DatasetSpec(path=str(b), format="sharegpt"),
        ])
        assert train | val == set(samples(full.train))
    else:
        # The weighted draw resamples the 45 training samples only.
        assert len(data.train) == 45
        assert np.bincount(data.train.refs[:, 0], minlength=2).tolist() == [15, 30]


def test_val_max_samples_caps_validation(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows("alpha", 40))
    data = build(tokenizer, tmp_path, [DatasetSpec(path=str(a), format="sharegpt")],
                 val_fraction=0.5, val_max_samples=6)
    assert len(data.val) == 6 and len(data.train) == 34
    assert not set(samples(data.train)) & set(samples(data.val))


# --------------------------------------------------------------------------- file types

SHAREGPT_ROWS = [
    {"system": "", "conversations": [{"from": "human", "value": "One?"}, {"from": "gpt", "value": "1"}]},
    {"system": "Count.", "conversations": [{"from": "human", "value": "Two?"}, {"from": "gpt", "value": "2"},
                                            {"from": "human", "value": "Three?"}, {"from": "gpt", "value": "3"}]},
    {"system": "", "conversations": [{"from": "human", "value": "Ünïcödé ✓"}, {"from": "gpt", "value": "ok"}]},
]
ALPACA_ROWS = [
    {"instruction": "Add.", "input": "2 and 3", "output": "5", "system": "", "history": []},
    {"instruction": "Again?", "input": "", "output": "5 again", "system": "Maths.", "history": [["Add 1+1", "2"]]},
]


def _write_all_types(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {"jsonl": write_jsonl(tmp_path / "rows.jsonl", rows)}
    paths["json"] = tmp_path / "rows.json"
    paths["json"].write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    paths["json_wrapped"] = tmp_path / "wrapped.json"
    paths["json_wrapped"].write_text(json.dumps({"data": rows}), encoding="utf-8")
    paths["parquet"] = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    return paths


@pytest.mark.parametrize(("fmt", "rows"), [("sharegpt", SHAREGPT_ROWS), ("alpaca", ALPACA_ROWS)])
def test_json_and_parquet_read_like_jsonl(tmp_path, fmt, rows):
    paths = _write_all_types(tmp_path, rows)
    by_type = {kind: read_convs(DatasetSpec(path=str(p), format=fmt)) for kind, p in paths.items()}
    assert len(by_type["jsonl"]) == len(rows)
    for kind, convs in by_type.items():
        assert convs == by_type["jsonl"], kind


def test_parquet_tokenizes_like_jsonl(tmp_path, tokenizer):
    paths = _write_all_types(tmp_path, SHAREGPT_ROWS)
    a = build(tokenizer, tmp_path, [DatasetSpec(path=str(paths["jsonl"]), format="sharegpt")])
    b = build(tokenizer, tmp_path, [DatasetSpec(path=str(paths["parquet"]), format="sharegpt")])
    assert samples(a.train) == samples(b.train)
    assert len(samples(a.train)) == 3


# --------------------------------------------------------------------------- tokenized cache


def _arrays(data):
    src = data.train.sources[0]
    return np.asarray(src.input_ids), np.asarray(src.trained), np.asarray(src.offsets)


def test_cache_hit_gives_identical_arrays(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows("cached", 12))
    specs = [DatasetSpec(path=str(path), format="sharegpt")]
    first = build(tokenizer, tmp_path, specs, val_fraction=0.25)
    second = build(tokenizer, tmp_path, specs, val_fraction=0.25)
    assert first.reports[0].from_cache is False
    assert second.reports[0].from_cache is True
    for x, y in zip(_arrays(first), _arrays(second)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(first.train.refs, second.train.refs)
    np.testing.assert_array_equal(first.val.refs, second.val.refs)
    assert (second.reports[0].rows, second.reports[0].samples) == (12, 12)


def test_cache_keeps_skip_and_truncation_counts(tmp_path, tokenizer):
    rows = qa_rows("x", 3) + ["{not json"]
    rows.append({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "long " * 100}]})
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    specs = [DatasetSpec(path=str(path), format="sharegpt")]
    first = build(tokenizer, tmp_path, specs, on_bad_sample="skip", max_length=64)
    second = build(tokenizer, tmp_path, specs, on_bad_sample="skip", max_length=64)
    assert second.reports[0].from_cache
    for r in (first.reports[0], second.reports[0]):
        assert (r.rows, r.samples, r.truncated, r.skipped) == (5, 4, 1, {"malformed JSON": 1})


def test_cache_miss_on_max_length_change(tmp_path, tokenizer):
    rows = [{"conversations": [{"from": "human", "value": f"Q{i}"}, {"from": "gpt", "value": "word " * 60}]}
            for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    specs = [DatasetSpec(path=str(path), format="sharegpt")]
    long_ = build(tokenizer, tmp_path, specs, max_length=512)
    short = build(tokenizer, tmp_path, specs, max_length=40)
    assert short.reports[0].from_cache is False
    assert short.reports[0].truncated == 3 and long_.reports[0].truncated == 0
    assert set(short.train.lengths().tolist()) == {40}
    assert min(long_.train.lengths()) > 40
    again = build(tokenizer, tmp_path, specs, max_length=512)
    assert again.reports[0].from_cache is True
    np.testing.assert_array_equal(_arrays(again)[0], _arrays(long_)[0])


def test_cache_miss_on_file_content_change(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows("before", 3))
    specs = [DatasetSpec(path=str(path), format="sharegpt")]
    first = build(tokenizer, tmp_path, specs)
    write_jsonl(path, qa_rows("after", 3))
    second = build(tokenizer, tmp_path, specs)
    assert second.reports[0].from_cache is False
    assert all("after" in tokenizer.decode(list(s)) for s in samples(second.train))
    assert not set(samples(first.train)) & set(samples(second.train))


def test_cache_miss_on_chat_template_change(tmp_path, tokenizer):
    from mmtune.data.templates import install_template

    path = write_jsonl(tmp_path / "d.jsonl", qa_rows("t", 2))
    specs = [DatasetSpec(path=str(path), format="sharegpt")]
    own = build(tokenizer, tmp_path, specs)
    install_template(tokenizer, "alpaca")
    other = build(tokenizer, tmp_path, specs, template="alpaca")
    assert other.reports[0].from_cache is False
    assert "### Instruction:" in tokenizer.decode(list(samples(other.train)[0]))
    assert "### Instruction:" not in tokenizer.decode(list(samples(own.train)[0]))


def test_validation_split_that_leaves_no_training_sample_is_an_error(tmp_path, tokenizer):
    from mmtune.errors import DataError

    path = write_jsonl(tmp_path / "one.jsonl", [{"instruction": "Hi", "output": "Hello."}])
    install_template(tokenizer, "auto")
    cfg = DataConfig(datasets=[DatasetSpec(path=str(path), format="alpaca")], val_fraction=0.9,
                     cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="no training sample left"):
        build_conversation_data(tokenizer, cfg, seed=0)
