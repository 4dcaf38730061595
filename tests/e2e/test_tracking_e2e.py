"""A tiny run reports to TensorBoard through ``train.report_to``: every step's figures, the recipe, the final figures,
read back from the event files."""

from __future__ import annotations

import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mmtune


def test_tensorboard_gets_each_step_the_recipe_and_the_final_figures(tiny_recipe):
    result = mmtune.train(tiny_recipe(train={"max_steps": 3, "lr": 1e-2, "tensorboard": True,
                                             "report_to": ["tensorboard"]}))
    board = result.run_dir / "tensorboard"
    events = EventAccumulator(str(board))
    events.Reload()
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)  # float32 on disk
    assert {"lr", "grad_norm", "tokens_per_s", "targets_seen"} <= set(events.Tags()["scalars"])
    final = events.Scalars("final/loss")
    assert [e.step for e in final] == [3] and final[0].value == pytest.approx(result.final_loss, rel=1e-6)
    assert events.Scalars("final/targets_seen")[0].value == records[-1]["targets_seen"]
    (hparams,) = board.glob("*/hparams.yml")  # accelerate's copy of what add_hparams logged
    logged = yaml.safe_load(hparams.read_text())
    assert logged["train.lr"] == 0.01 and logged["train.max_steps"] == 3 and logged["model.name"] == str(
        tiny_recipe()["model"]["name"])
