"""``benchmarks/bench_lomo_memory.py`` compares methods on one recipe: what must hold without running it.

Each side's recipe validates against the schema, and the sides differ only in ``method`` and ``train.lr``
(same data, rows, steps, clipping, precision), so the peaks and losses it prints compare like with like.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

from mmtune.config.loader import validate_recipe

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_lomo_memory
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_lomo_memory


def test_every_side_validates_and_the_sides_differ_only_in_method_and_lr(bench, tmp_path):
    plan = {"model": "tiny", "model_dir": str(tmp_path / "llm"), "work": str(tmp_path), "steps": 3,
            "max_length": 128, "micro_batch_size": 2, "checkpointing": True, "lr": {name: side["lr"] for name, side in bench.METHODS.items()}}
    recipes = {name: bench.recipe_for(plan, name) for name in bench.METHODS}
    methods = {name: validate_recipe(r).method.name for name, r in recipes.items()}
    assert methods == {"adamw": "full", "lomo": "lomo", "adalomo": "lomo", "lora": "lora"}

    def common(recipe: dict) -> dict:
        rest = copy.deepcopy(recipe)
        del rest["method"], rest["train"]["lr"], rest["output_dir"]
        return rest

    first = common(recipes["adamw"])
    assert all(common(r) == first for r in recipes.values())
    assert first["train"]["max_steps"] == 3 and first["train"]["mixed_precision"] == "no"
    assert first["train"]["gradient_checkpointing"] is True
    assert len({r["output_dir"] for r in recipes.values()}) == len(recipes)
