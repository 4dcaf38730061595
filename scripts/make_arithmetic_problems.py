"""Generate arithmetic word problems with exact answers (seeded), as JSONL.

WHY: the self-correction demonstration needs questions whose answers can be
checked exactly and that the project can make itself (nothing is downloaded).
Each row: ``id``, ``question``, ``answer`` (the number, as text) and
``solution`` (a one-line worked solution that ends with the answer), the
fields ``mmtune data selfcorrect`` reads by default.

    python scripts/make_arithmetic_problems.py --n 600 --seed 1 --out train.jsonl
    python scripts/make_arithmetic_problems.py --n 100 --seed 2 --out heldout.jsonl --id-prefix heldout
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["Tom", "Anna", "Ravi", "Mia", "Lena", "Omar", "Sara", "Ben", "Yuki", "Noah", "Ida", "Leo"]
THINGS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "stamps", "cards", "shells"]


def _add(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    q = f"{name} has {a} {thing}. {name} gets {b} more {thing}. How many {thing} does {name} have now?"
    return q, a + b, f"{a} + {b} = {a + b}."


def _sub(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a = rng.randint(10, 80)
    b = rng.randint(1, a - 1)
    q = f"{name} has {a} {thing} and gives away {b} of them. How many {thing} does {name} have left?"
    return q, a - b, f"{a} - {b} = {a - b}."


def _mul(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    q = f"{name} has {a} boxes with {b} {thing} in each box. How many {thing} does {name} have in total?"
    return q, a * b, f"{a} x {b} = {a * b}."


def _two_step(rng: random.Random) -> tuple[str, int, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(5, 40), rng.randint(2, 30)
    c = rng.randint(1, a + b - 1)
    q = (f"{name} has {a} {thing}, buys {b} more and then gives {c} to a friend. "
         f"How many {thing} does {name} have now?")
    return q, a + b - c, f"{a} + {b} = {a + b}, and {a + b} - {c} = {a + b - c}."


KINDS = {"add": _add, "sub": _sub, "mul": _mul, "two_step": _two_step}


def make_problems(n: int, seed: int, id_prefix: str = "arith") -> list[dict]:
    """``n`` problems, kinds drawn uniformly; the same ``seed`` gives the same problems."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(sorted(KINDS))
        question, answer, work = KINDS[kind](rng)
        rows.append({"id": f"{id_prefix}-{i:05d}", "kind": kind, "question": question, "answer": str(answer),
                     "solution": f"{work} The answer is {answer}."})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="number of problems")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    p.add_argument("--id-prefix", default="arith")
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        for row in make_problems(args.n, args.seed, args.id_prefix):
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {args.n} problems to {args.out}")


if __name__ == "__main__":
    main()
