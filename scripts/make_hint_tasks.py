"""Write the shipped task collection of the HINT demonstration (seed 0, byte-identical when rerun).

WHY: the demonstration trains on 30 synthetic text tasks and evaluates zero-shot on 10 held-out ones, each a
Super-NaturalInstructions task file (``mmtune.datagen.hint_tasks``). Shipping the files lets a user read the data
and lets a test check that the shipped files are exactly what this script writes.

    python scripts/make_hint_tasks.py            # -> datasets/mmtune-hint-tasks/{train,heldout}/<task>.json
"""

from __future__ import annotations

import sys
from pathlib import Path

from mmtune.datagen.hint_tasks import (
    HELD_OUT,
    HELD_OUT_BECAUSE,
    TASKS,
    TRAIN,
    write_task_collection,
)

ROOT = Path(__file__).resolve().parents[1] / "datasets" / "mmtune-hint-tasks"
SEED, TRAIN_INSTANCES, HELDOUT_INSTANCES, EXAMPLES = 0, 64, 24, 2


def data_card() -> str:
    """The README of the collection: sizes, licence and every task's definition (from the module's data)."""
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
    (root / "README.md").write_text(data_card(), encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
