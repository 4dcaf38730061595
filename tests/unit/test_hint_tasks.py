"""The HINT demonstration's synthetic tasks: SNI layout, determinism, split, and answers recomputed here.

Answers are checked against computations written in this file from the input text (not by calling the task's
builder or answer function again), and the shipped files against a fresh run of the script that wrote them.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from mmtune.datagen.hint_tasks import (
    HELD_OUT,
    HELD_OUT_BECAUSE,
    INPUT_KINDS,
    TASKS,
    TRAIN,
    definition_of,
    write_task_collection,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "datasets" / "mmtune-hint-tasks"
SNI_KEYS = ["Contributors", "Source", "Categories", "Definition", "Positive Examples", "Negative Examples",
            "Instances"]
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _script():
    spec = importlib.util.spec_from_file_location("make_hint_tasks", REPO / "scripts" / "make_hint_tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def load(folder: Path) -> dict[str, dict]:
    """Task name -> its SNI file's content, both splits."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*/*.json"))}


def ints(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


# Independent answers, from the input text alone.
EXPECTED = {
    "reverse_words": lambda s: " ".join(reversed(s.split())),
    "uppercase_words": str.upper,
    "capitalize_words": str.title,
    "first_letters": lambda s: " ".join(re.findall(r"\b[a-z]", s)),
    "last_letters": lambda s: " ".join(re.findall(r"[a-z]\b", s)),
    "uppercase_first_letters": lambda s: " ".join(re.findall(r"\b[a-z]", s)).upper(),
    "first_word": lambda s: s.partition(" ")[0],
    "last_word": lambda s: s.rpartition(" ")[2],
    "drop_first_word": lambda s: s.partition(" ")[2],
    "duplicate_words": lambda s: re.sub(r"(\w+)", r"\1 \1", s),
    "join_words_with_hyphens": lambda s: s.replace(" ", "-"),
    "sort_words_alphabetically": lambda s: " ".join(sorted(s.split())),
    "sort_words_reverse_alphabetically": lambda s: " ".join(sorted(s.split())[::-1]),
    "reverse_and_uppercase": lambda s: " ".join(s.upper().split()[::-1]),
    "reverse_each_word": lambda s: " ".join(s[::-1].split()[::-1]),
    "reverse_first_word": lambda s: s.split()[0][::-1],
    "word_lengths": lambda s: " ".join(str(len(w)) for w in s.split()),
    "longest_word": lambda s: next(w for w in s.split() if len(w) == max(map(len, s.split()))),
    "remove_vowels": lambda s: re.sub("[aeiou]", "", s),
    "count_vowels": lambda s: str(len(re.findall("[aeiou]", s))),
    "count_consonants": lambda s: str(len(re.findall("[b-df-hj-np-tv-z]", s))),
    "count_words": lambda s: str(s.count(" ") + 1),
    "count_numbers": lambda s: str(len(ints(s))),
    "sort_numbers_ascending": lambda s: " ".join(map(str, sorted(ints(s)))),
    "sort_numbers_descending": lambda s: " ".join(map(str, sorted(ints(s), reverse=True))),
    "largest_number": lambda s: str(max(ints(s))),
    "smallest_number": lambda s: str(min(ints(s))),
    "last_number": lambda s: str(ints(s)[-1]),
    "sum_numbers": lambda s: str(sum(ints(s))),
    "double_numbers": lambda s: " ".join(str(n + n) for n in ints(s)),
    "add_one": lambda s: re.sub(r"\d+", lambda m: str(int(m.group()) + 1), s),
    "keep_even_numbers": lambda s: " ".join(str(n) for n in ints(s) if n % 2 == 0) or "none",
    "keep_numbers_above_50": lambda s: " ".join(str(n) for n in ints(s) if n > 50) or "none",
    "count_even_numbers": lambda s: str(len([n for n in ints(s) if n % 2 == 0])),
    "digits_to_words": lambda s: re.sub(r"\d", lambda m: NAMES[int(m.group())], s),
    "remove_digits": lambda s: " ".join(re.findall("[a-z]+", s)),
    "remove_words": lambda s: " ".join(re.findall(r"\d", s)),
    "count_digits": lambda s: str(len(re.findall(r"\d", s))),
    "sum_digits": lambda s: str(sum(map(int, re.findall(r"\d", s)))),
    "last_digit": lambda s: re.findall(r"\d", s)[-1],
}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """The shipped collection as the script writes it now."""
    root = tmp_path_factory.mktemp("hint") / "mmtune-hint-tasks"
    _script().main(root)
    return root


def test_shipped_files_are_what_the_script_writes(written):
    assert files(SHIPPED) == files(written)
    assert sum(len(b) for b in files(SHIPPED).values()) < 1_000_000


def test_split_30_train_10_held_out(written):
    assert len(TRAIN) == 30 and len(HELD_OUT) == 10 and not set(TRAIN) & set(HELD_OUT)
    assert set(TRAIN) | set(HELD_OUT) == set(TASKS) and set(HELD_OUT_BECAUSE) == set(HELD_OUT)
    assert sorted(p.stem for p in (written / "train").glob("*.json")) == sorted(TRAIN)
    assert sorted(p.stem for p in (written / "heldout").glob("*.json")) == sorted(HELD_OUT)
    assert all(re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", name) for name in TASKS)
    definitions = [definition_of(name) for name in TASKS]
    assert len(set(definitions)) == len(TASKS)  # only the instruction tells tasks apart: no two alike


def test_sni_layout(written):
    tasks = load(written)
    ids = [row["id"] for task in tasks.values() for row in task["Instances"]]
    assert len(ids) == len(set(ids)) == 30 * 64 + 10 * 24
    for name, task in tasks.items():
        assert list(task) == SNI_KEYS, name
        assert task["Definition"] == [definition_of(name)] and task["Source"] == ["mmtune synthetic"]
        assert len(task["Positive Examples"]) == 2 and task["Negative Examples"] == []
        for example in task["Positive Examples"]:
            assert set(example) == {"input", "output", "explanation"} and isinstance(example["output"], str)
        for n, row in enumerate(task["Instances"]):
            assert row["id"] == f"{name}-{n}"
            assert isinstance(row["output"], list) and len(row["output"]) == 1 and row["output"][0]
        inputs = [row["input"] for row in task["Instances"]]
        assert len(set(inputs)) == len(inputs), name
        assert not {e["input"] for e in task["Positive Examples"]} & set(inputs), name


def test_every_answer_matches_an_independent_computation(written):
    assert set(EXPECTED) == set(TASKS)
    for name, task in load(written).items():
        rows = [(e["input"], e["output"]) for e in task["Positive Examples"]]
        rows += [(r["input"], r["output"][0]) for r in task["Instances"]]
        for text, answer in rows:
            assert answer == EXPECTED[name](text), (name, text, answer)


def test_answers_are_short():
    rng = random.Random(1)
    for name, task in TASKS.items():
        for _ in range(20):
            text, answer = task.build(rng)
            assert 3 <= len(text.split()) <= 6 and 1 <= len(answer.split()) <= 12, (name, text, answer)


def test_inputs_are_shared_so_only_the_instruction_tells_tasks_apart(written):
    tasks = load(written)
    shapes = {"words": r"[a-z]+( [a-z]+){2,5}", "numbers": r"[1-9]\d?( [1-9]\d?){2,5}",
              "mixed": r"(?=.*[a-z])(?=.*\d)\w+( \w+){3,5}"}
    kind = {name: [k for k, shape in shapes.items()
                   if all(re.fullmatch(shape, r["input"]) for r in task["Instances"])] for name, task in tasks.items()}
    assert all(len(k) == 1 for k in kind.values()), kind
    counts = {k: [kind[n] for n in TRAIN].count([k]) for k in shapes}
    assert counts["words"] >= 10 and counts["numbers"] >= 5 and counts["mixed"] >= 5, counts
    # Word tasks draw from one pool: each one's vocabulary covers most of the words all of them use.
    vocab = {n: {w for r in tasks[n]["Instances"] for w in r["input"].split()} for n in tasks if kind[n] == ["words"]}
    pool = set().union(*vocab.values())
    assert all(len(v) >= 0.6 * len(pool) for v in vocab.values())


def test_no_two_tasks_answer_alike_on_their_shared_inputs():
    """Each held-out task is new (no training task gives its answers), and no two training tasks coincide."""
    rng = random.Random(2)
    samples = {kind: [draw(rng) for _ in range(30)] for kind, draw in INPUT_KINDS.items()}
    for a in TASKS.values():
        for b in TASKS.values():
            if a.name < b.name and a.inputs == b.inputs:
                inputs = samples[a.inputs]
                assert [a.answer(t) for t in inputs] != [b.answer(t) for t in inputs], (a.name, b.name)


def test_same_seed_same_bytes_other_seed_other_instances(tmp_path):
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_task_collection(tmp_path / folder, seed=seed, train_instances=4, heldout_instances=3, examples=1)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    a, c = load(tmp_path / "a"), load(tmp_path / "c")
    assert len(a) == 40 and all(len(t["Instances"]) == (4 if n in TRAIN else 3) for n, t in a.items())
    assert all(a[n]["Instances"] != c[n]["Instances"] for n in a)
    assert all(len(t["Positive Examples"]) == 1 for t in c.values())
