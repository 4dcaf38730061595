"""The InstructPix2Pix benchmark's parity check (a), small.

``benchmarks/bench_instruct_pix2pix.py`` compares mmtune's edit task with a loop that follows diffusers'
``train_instruct_pix2pix.py``. Its figures are for a person to read; what must always hold is tested
here: on the same batch and the same draws, mmtune's ``EditObjective`` and the baseline's step give the
same loss and gradients (every conditioning-dropout case included).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_instruct_pix2pix
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_instruct_pix2pix


@pytest.fixture
def plan(bench, tiny_sd_dir, tmp_path) -> dict:
    data = bench.write_triplets(tmp_path / "triplets", 8, size=40, seed=0)
    return {"sd": str(tiny_sd_dir), "data": str(data), "resolution": 32, "steps": 3, "warmup": 1, "batch": 4,
            "accum": 2, "workers": 0, "device": "cpu", "mixed_precision": "no", "mmtune_run": str(tmp_path / "run")}


def test_mmtune_objective_and_the_example_step_give_the_same_loss_and_gradients(bench, plan):
    parity = bench.parity_check(plan)
    assert parity["unet_weights_max_diff"] == 0  # both widen conv_in the same way from the same UNet
    assert parity["same_input_ids"]
    cases = parity["cases"]
    assert set(cases) == {"random draws", "every dropout case"}
    for case in cases.values():
        assert case["abs_diff"] <= 1e-5, case
        assert case["max_grad_diff"] <= 1e-6 * max(case["max_grad"], 1.0), case
    # The forced draws hit text-only, both, image-only and no dropout (p = 0.05).
    assert cases["every dropout case"]["dropout_r"] == [0.025, 0.075, 0.125, 0.5]
    assert parity["met"]

