"""Write the data of the sequential-tuning demonstration (seeded, byte-identical when rerun).

WHY: showing forgetting needs a narrow task after a general one, and a narrower one after that, each with
exact answers and a held-out split, made by the project itself (nothing is downloaded):

- ``datasets/mmtune-arith/``: bare arithmetic ("What is 47 + 38?" -> "85"), two-digit +, - and two-digit x one-digit.
- ``datasets/mmtune-units/``: one-line word problems with units ("A rope is 4 m long ... in cm?" -> "255 cm").
- ``datasets/mmtune-instruct-last40/``: the last 40 rows of ``mmtune-instruct`` (held out when training on its
  first 260 with ``max_samples: 260``): the general set of the forgetting report.

Questions of a test split never appear in its train split. Rows are Alpaca (``instruction``, ``output``).

    python scripts/make_sequential_sets.py
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "datasets"
TRAIN, TEST = 240, 40


def arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice("+-x")
    a, b = rng.randint(10, 99), rng.randint(2, 9) if op == "x" else rng.randint(10, 99)
    if op == "-" and b > a:
        a, b = b, a
    return f"What is {a} {op} {b}?", str({"+": a + b, "-": a - b, "x": a * b}[op])


def _rope(rng):
    m, cm = rng.randint(2, 9), rng.randint(1, 19) * 5
    return f"A rope is {m} m long. You cut off {cm} cm. How many cm are left?", f"{100 * m - cm} cm"


def _drive(rng):
    v, h = rng.randint(3, 12) * 10, rng.randint(2, 5)
    return f"A car drives at {v} km per hour for {h} hours. How far does it go?", f"{v * h} km"


def _bottles(rng):
    ml, n = rng.randint(2, 9) * 50, rng.randint(2, 6)
    return f"A bottle holds {ml} ml. How much do {n} bottles hold?", f"{ml * n} ml"


def _bags(rng):
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    return f"One bag weighs {a} kg and another weighs {b} kg. How much do they weigh together?", f"{a + b} kg"


def _film(rng):
    h, m = rng.randint(1, 3), rng.randint(1, 59)
    return f"A film lasts {h} hours and {m} minutes. How many minutes is that?", f"{60 * h + m} minutes"


def _flour(rng):
    n, k = rng.randint(2, 8), rng.randint(2, 12) * 25
    return f"{n * k} g of flour is shared equally into {n} bowls. How many grams go in each bowl?", f"{k} g"


def unit_problem(rng: random.Random) -> tuple[str, str]:
    return rng.choice([_rope, _drive, _bottles, _bags, _film, _flour])(rng)


def draw(make: Callable[[random.Random], tuple[str, str]], seed: int) -> tuple[list[dict], list[dict]]:
    """``TEST`` then ``TRAIN`` distinct questions; the splits share none."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < TEST + TRAIN:
        question, answer = make(rng)
        if question not in seen:
            seen.add(question)
            rows.append({"instruction": question, "output": answer})
    return rows[TEST:], rows[:TEST]


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    for name, make, seed in (("mmtune-arith", arithmetic, 11), ("mmtune-units", unit_problem, 12)):
        train, test = draw(make, seed)
        write(ROOT / name / "train.jsonl", train)
        write(ROOT / name / "test.jsonl", test)
    general = (ROOT / "mmtune-instruct" / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (ROOT / "mmtune-instruct-last40").mkdir(exist_ok=True)
    (ROOT / "mmtune-instruct-last40" / "test.jsonl").write_text("".join(general[-40:]), encoding="utf-8")


if __name__ == "__main__":
    main()
