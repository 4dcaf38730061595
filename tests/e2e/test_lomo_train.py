"""``method.name: lomo`` through ``mmtune.train`` on the tiny random Llama: it learns, writes full weights, and an
interrupted AdaLomo run (which has state) resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import mmtune
from mmtune.training import loop as loop_module
from conftest import sharegpt_rows, write_jsonl


@pytest.fixture()
def chats(tmp_path) -> Path:
    convs = [[{"role": "user", "content": f"What is {a} plus {a}?"},
              {"role": "assistant", "content": f"{a} plus {a} is {2 * a}. " * 3}] for a in range(16)]
    return write_jsonl(tmp_path / "chats.jsonl", sharegpt_rows(convs))


def records(run_dir: Path) -> dict[int, dict]:
    """step -> its training record (a resumed run's record of a step replaces the earlier one)."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_lomo_trains_every_weight_and_the_loss_falls(tiny_recipe, chats, tiny_llama_dir, one_torch_thread):
    recipe = tiny_recipe(chats, method={"name": "lomo"}, data={"max_length": 128},
                         train={"max_steps": 8, "lr": 0.5, "warmup_steps": 0, "scheduler": "constant"})
    result = mmtune.train(recipe)
    seen = records(result.run_dir)
    assert sorted(seen) == list(range(1, 9))
    assert all(r["grad_norm"] > 0 for r in seen.values())  # measured in the first of the two passes
    assert seen[8]["loss"] < seen[1]["loss"] - 1.0, (seen[1]["loss"], seen[8]["loss"])
    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    final = load_file(str(result.final_dir / "model.safetensors"))
    moved = [name for name, t in base.items() if not t.equal(final[name])]
    assert len(moved) == len(base)  # full-parameter tuning: every tensor moved, norms included
    assert json.loads((result.final_dir / "mmtune.json").read_text())["method"] == "lomo"


def test_an_interrupted_adalomo_run_resumes_exactly(tiny_recipe, chats, tmp_path, monkeypatch, one_torch_thread):
    def recipe(name: str, **train) -> dict:
        return tiny_recipe(chats, output_dir=str(tmp_path / name), data={"max_length": 128},
                           method={"name": "lomo", "lomo": {"optimizer": "adalomo"}},
                           train={"max_steps": 5, "lr": 1e-2, "keep_checkpoints": None, **train})

    reference = records(mmtune.train(recipe("ref")).run_dir)
    original = loop_module.MetricsLogger.log

    def stop_after_step_3(self, record):
        original(self, record)
        if record.get("step") == 3 and "loss" in record:
            raise KeyboardInterrupt  # Ctrl-C: the loop saves step 3, AdaLomo's moments included

    with monkeypatch.context() as m:
        m.setattr(loop_module.MetricsLogger, "log", stop_after_step_3)
        with pytest.raises(KeyboardInterrupt):
            mmtune.train(recipe("cut"))
    resumed = records(mmtune.train(recipe("cut", resume="auto")).run_dir)
    for step in (4, 5):
        assert resumed[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-6), step
        assert resumed[step]["grad_norm"] == pytest.approx(reference[step]["grad_norm"], rel=1e-5), step


def test_two_processes_are_refused_in_one_line_naming_the_key(tiny_recipe, chats, tmp_path):
    """Each weight moves inside backward, before DDP could average its gradient: torchrun with 2 processes stops."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(chats, method={"name": "lomo"}, data={"num_workers": 0},
                                               train={"max_steps": 1})))
    repo = str(Path(__file__).resolve().parents[2])  # this checkout's mmtune in the child processes
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "mmtune.cli", "train", str(path)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode != 0
    refusals = [line for line in proc.stderr.splitlines() if "method.name: lomo runs in one process" in line]
    assert refusals, proc.stderr[-3000:]  # from each process that got there before torchrun stopped the other
    assert all(line.startswith("mmtune: error: ") and "this run has 2 processes" in line for line in refusals)
