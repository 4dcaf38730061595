"""Write the shipped task collection of the HINT demonstration (seed 0, byte-identical when rerun).

WHY: the demonstration trains on 30 synthetic text tasks and evaluates zero-shot on 10 held-out ones, each a
Super-NaturalInstructions task file (``mmtune.datagen.hint_tasks``). Shipping the files lets a user read the data
and lets a test check that the shipped files are exactly what this script writes.

    python scripts/make_hint_tasks.py            # -> datasets/mmtune-hint-tasks/{train,heldout}/<task>.json
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mmtune.datagen.hint_tasks import (
    HELD_OUT,
    HELD_OUT_BECAUSE,
    TASKS,
    TRAIN,
    HintTask,
    write_task_collection,
)

ROOT = Path(__file__).resolve().parents[1] / "datasets" / "mmtune-hint-tasks"
SEED, TRAIN_INSTANCES, HELDOUT_INSTANCES, EXAMPLES = 0, 64, 24, 2


def _instances(root: Path, split: str, name: str) -> list[tuple[list[str], str]]:
    rows = json.loads((root / split / f"{name}.json").read_text(encoding="utf-8"))["Instances"]
    return [(row["input"].split(), row["output"][0]) for row in rows]


def blind_figures(root: Path) -> tuple[float, float]:
    """What a model without the instruction can reach, from the written files.

    First: on training instances, answering what most training tasks of the input's kind answer (a uniform prior
    over the tasks). Second: the share of held-out instances whose answer any training task of the same input kind
    also gives, the most a model that learned only the training behaviours can reach there.
    """
    def kin(name: str) -> list[HintTask]:
        return [TASKS[other] for other in TRAIN if TASKS[other].inputs == TASKS[name].inputs]

    modal = [Counter(t.answer(tokens) for t in kin(name)).most_common(1)[0][0] == answer
             for name in TRAIN for tokens, answer in _instances(root, "train", name)]
    shared = [any(t.answer(tokens) == answer for t in kin(name))
              for name in HELD_OUT for tokens, answer in _instances(root, "heldout", name)]
    return sum(modal) / len(modal), sum(shared) / len(shared)


def data_card(root: Path) -> str:
    """The README of the collection: sizes, licence, instruction-blind figures and every task's definition."""
    modal, shared = blind_figures(root)
    lines = [
        "# mmtune-hint-tasks",
        "",
        "Synthetic text-transformation tasks for mmtune's HINT demonstration, in the Super-NaturalInstructions",
        "task-file layout (`Definition`, `Positive Examples`, `Instances` with `output` lists). Licence: CC0-1.0.",
        f"Written by `python scripts/make_hint_tasks.py` (seed {SEED}; byte-identical when rerun) from",
        "`mmtune/datagen/hint_tasks.py`.",
        "",
        f"- `train/`: {len(TRAIN)} tasks, {TRAIN_INSTANCES} instances each; `heldout/`: {len(HELD_OUT)} tasks, "
        + f"{HELDOUT_INSTANCES} instances each;",
        f"  {EXAMPLES} positive examples per task, never among its instances.",
        "- Inputs are shared by many tasks (`words`: 3-6 short lowercase words; `numbers`: 3-6 numbers from 1 to 99;",
        "  `mixed`: words and single digits), so only the instruction tells the tasks apart; answers are exact.",
        f"- Without the instruction: answering what most training tasks of an input's kind answer gets {modal:.1%}",
        f"  of training instances right; any training task's answer matches only {shared:.1%} of held-out instances",
        "  (the most a model that learned only the training behaviours can score there).",
        "",
        "| split | task | input | definition |",
        "|---|---|---|---|",
    ]
    for split, names in (("train", TRAIN), ("heldout", HELD_OUT)):
        lines += [f"| {split} | `{n}` | {TASKS[n].inputs} | {TASKS[n].definition} |" for n in names]
    lines += ["", "Why each held-out task is solvable from its instruction (the training operations it combines):", ""]
    lines += [f"- `{name}`: {why}" for name, why in HELD_OUT_BECAUSE.items()]
    return "\n".join(lines) + "\n"


def main(root: Path = ROOT) -> None:
    write_task_collection(root, seed=SEED, train_instances=TRAIN_INSTANCES, heldout_instances=HELDOUT_INSTANCES,
                          examples=EXAMPLES)
    (root / "README.md").write_text(data_card(root), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
