"""Multi-task mixtures: per-task training and evaluation losses, exact under packing."""

from __future__ import annotations

import json

import pytest

import mmtune
from tests.conftest import sharegpt_rows, write_jsonl


def _task_files(tmp_path):
    sums = [[{"role": "user", "content": f"{a} plus {b}?"}, {"role": "assistant", "content": str(a + b)}]
            for a in range(3, 9) for b in (2, 5)]
    echo = [[{"role": "user", "content": f"Repeat: {w}"}, {"role": "assistant", "content": f"{w} {w} {w}"}]
            for w in ("red", "green", "blue", "cyan", "magenta", "yellow", "black", "white")]
    return write_jsonl(tmp_path / "sums.jsonl", sharegpt_rows(sums)), sums, \
        write_jsonl(tmp_path / "echo.jsonl", sharegpt_rows(echo)), echo


def test_per_task_losses_equal_the_losses_of_each_tasks_samples(tiny_recipe, tmp_path, tokenizer, tiny_llama_dir,
                                                                 one_torch_thread):
    """One step over every sample, packed rows mixing both tasks: each task_loss/<task> is that task's own loss."""
    from transformers import AutoModelForCausalLM

    from mmtune.evaluation import answer_loss

    sums_file, sums, echo_file, echo = _task_files(tmp_path)
    recipe = tiny_recipe(
        data={"datasets": [{"path": str(sums_file), "format": "sharegpt", "task": "sums"},
                           {"path": str(echo_file), "format": "sharegpt", "task": "echo"}],
              "packing": True, "shuffle": False},
        method={"name": "lora", "lora": {"dropout": 0.0}},  # LoRA starts as the identity: step 1 sees the base model
        train={"max_steps": 1, "micro_batch_size": 64, "progress": False, "tensorboard": False},
    )
    run = mmtune.train(recipe).run_dir
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    expected = {}
    for name, convs in (("sums", sums), ("echo", echo)):
        s, n, _ = answer_loss(base, tokenizer, convs, max_length=256, progress=False)
        expected[name] = (sum(s), sum(n))
        assert record[f"task_loss/{name}"] == pytest.approx(sum(s) / sum(n), rel=1e-4)
    total = sum(s for s, _ in expected.values()) / sum(n for _, n in expected.values())
    assert record["loss"] == pytest.approx(total, rel=1e-4)
    assert record["task_loss/sums"] != pytest.approx(record["task_loss/echo"], rel=1e-3)


def test_evaluation_reports_each_tasks_held_out_loss(tiny_recipe, tmp_path, one_torch_thread):
    sums_file, _, echo_file, _ = _task_files(tmp_path)
    recipe = tiny_recipe(
        data={"datasets": [{"path": str(sums_file), "format": "sharegpt", "task": "sums"},
                           {"path": str(echo_file), "format": "sharegpt"}],  # no task: only in the totals
              "val_fraction": 0.25},
        train={"max_steps": 2, "eval_every": 2, "progress": False, "tensorboard": False},
    )
    run = mmtune.train(recipe).run_dir
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    assert len(evals) == 1 and set(evals[0]) == {"step", "eval_loss", "eval_loss/sums"}
    assert all("task_loss/sums" in r and "task_loss/echo" not in r for r in records if "loss" in r)
