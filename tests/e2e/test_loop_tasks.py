"""The training loop runs a task it has never seen: a second task plugs in through the TaskRun contract alone.

The task here is a toy regression whose targets are *samples* (as the diffusion edit task's will be), with an
exponential moving average of its weights updated after every step and kept in checkpoints (as the edit task's
EMA UNet will be). It is registered in the two tables a task uses (``TASKS``, ``TASK_RECIPES``) and run by
``mmtune.train``; nothing of the loop is changed for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch
from torch import nn

import mmtune
from mmtune.config.schema import TASK_RECIPES, Recipe
from mmtune.data.packing import BatchProblem
from mmtune.training import tasks as task_table
from mmtune.training.tasks.base import TaskRun


class ToyRecipe(Recipe):
    task: Literal["toy"] = "toy"
    samples: int = 24
    ema_decay: float = 0.5


@dataclass
class ToyBatch:
    x: torch.Tensor
    y: torch.Tensor
    problems: list[BatchProblem] = field(default_factory=list)

    @property
    def num_targets(self) -> int:
        return len(self.x)

    def to(self, device) -> "ToyBatch":
        return ToyBatch(self.x.to(device), self.y.to(device), self.problems)


class Regression(nn.Module):
    """Summed squared error per sample: the loop divides by the samples of the window."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, batch: ToyBatch):
        return ((self.linear(batch.x).squeeze(-1) - batch.y) ** 2).sum(), torch.tensor(len(batch.x))


class Collate:
    """Picklable (DataLoader workers): rows of sample indices -> a batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __call__(self, rows: list[list[int]]) -> ToyBatch:
        index = [i for row in rows for i in row]
        return ToyBatch(self.x[index], self.y[index])


class Ema:
    """A moving average of the weights, updated after each step and saved with checkpoints."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay = module, decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    def update(self) -> None:
        for k, v in self.module.state_dict().items():
            self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow, self.updates = state["shadow"], state["updates"]


class ToyTask:
    def setup(self, recipe: ToyRecipe, runtime) -> TaskRun:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(recipe.samples, 4, generator=generator)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
        model = Regression()
        ema = Ema(model, recipe.ema_decay)

        def write_final(target: Path, trained: Regression) -> None:
            target.mkdir(parents=True)
            torch.save({"weights": trained.state_dict(), "ema": ema.shadow, "ema_updates": ema.updates},
                       target / "toy.pt")

        return TaskRun(
            objective=model,
            param_groups=[{"params": list(model.parameters()), "lr": recipe.train.lr, "weight_decay": 0.0}],
            rows=[[i] for i in range(recipe.samples)], val_rows=[[i] for i in range(4)],
            collate=Collate(x, y), val_collate=Collate(x, y), save_final=write_final, num_workers=1,
            throughput_key="samples_per_s", after_step=ema.update, extra_state=ema,
        )


@pytest.fixture()
def toy_task(monkeypatch):
    monkeypatch.setitem(TASK_RECIPES, "toy", ToyRecipe)
    monkeypatch.setitem(task_table.TASKS, "toy", ToyTask())


def toy(tmp_path: Path, name: str, **train) -> dict:
    return {"task": "toy", "output_dir": str(tmp_path / name),
            "train": {"max_steps": 8, "micro_batch_size": 2, "lr": 0.3, "warmup_steps": 0, "scheduler": "constant",
                      "progress": False, "tensorboard": False, "eval_every": 2, **train}}


def records(run: Path) -> dict[int, dict]:
    out = {}
    for rec in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        out.setdefault(rec["step"], {}).update(rec)
    return out


def test_a_second_task_trains_checkpoints_resumes_and_writes_its_final(toy_task, tmp_path, monkeypatch):
    result = mmtune.train(toy(tmp_path, "ref"))
    ref = records(result.run_dir)
    assert ref[8]["eval_loss"] < ref[2]["eval_loss"] / 2  # it learns (the training losses are of 2 samples each)
    assert all("samples_per_s" in r for r in ref.values() if "loss" in r)
    final = torch.load(result.final_dir / "toy.pt")
    assert final["ema_updates"] == 8  # after_step ran once per optimizer step
    config = (result.run_dir / "config.yaml").read_text()
    assert "task: toy" in config and "ema_decay: 0.5" in config

    # Interrupted after step 5 (Ctrl-C saves a checkpoint), then resumed: the same losses and the same EMA.
    from mmtune.training import loop

    real_log = loop.MetricsLogger.log

    def stop_after_five(self, record):
        real_log(self, record)
        if record.get("step") == 5 and "loss" in record:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(loop.MetricsLogger, "log", stop_after_five)
        with pytest.raises(KeyboardInterrupt):
            mmtune.train(toy(tmp_path, "cut"))
    assert (tmp_path / "cut" / "checkpoints" / "step-5" / "task_state.pt").is_file()
    resumed = mmtune.train(toy(tmp_path, "cut", resume="auto"))
    cut = records(resumed.run_dir)
    for step in range(6, 9):
        assert cut[step]["loss"] == pytest.approx(ref[step]["loss"], abs=1e-7), step
    again = torch.load(resumed.final_dir / "toy.pt")
    assert again["ema_updates"] == 8
    for k in final["ema"]:
        torch.testing.assert_close(again["ema"][k], final["ema"][k])


def test_a_second_task_is_weighted_by_its_own_targets(toy_task, tmp_path):
    """1 sample x 4 accumulated micro-batches == 4 samples x 1: every sample weighs the same."""
    a = records(mmtune.train(toy(tmp_path, "a", micro_batch_size=1, grad_accum_steps=4, max_steps=3)).run_dir)
    b = records(mmtune.train(toy(tmp_path, "b", micro_batch_size=4, grad_accum_steps=1, max_steps=3)).run_dir)
    for step in (1, 2, 3):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6)
