"""Sequential tuning: init_from (merge, continue), multi-stage recipes, replay, the forgetting report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmtune
from mmtune.errors import ConfigError


def _logits(run_or_model, ids: torch.Tensor) -> torch.Tensor:
    from mmtune.models.run_outputs import load_for_inference

    model, _ = load_for_inference(str(run_or_model))
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture()
def first_run(tiny_recipe, tmp_path, one_torch_thread) -> Path:
    recipe = tiny_recipe(output_dir=str(tmp_path / "first"), method={"name": "lora", "lora": {"rank": 4}},
                         train={"max_steps": 3, "lr": 5e-2, "progress": False, "tensorboard": False})
    return mmtune.train(recipe).run_dir


@pytest.mark.parametrize("adapter", ["merge", "continue"])
def test_init_from_starts_from_the_earlier_runs_weights(tiny_recipe, tmp_path, tiny_llama_dir, first_run, adapter):
    """A second run with a vanishing learning rate ends where the first one ended, not at the base model."""
    recipe = tiny_recipe(output_dir=str(tmp_path / adapter), init_from={"run": str(first_run), "adapter": adapter},
                         method={"name": "lora", "lora": {"rank": 8}},
                         train={"max_steps": 1, "lr": 1e-12, "progress": False, "tensorboard": False})
    second = mmtune.train(recipe).run_dir
    ids = torch.tensor([[1, 42, 99, 7, 300, 12]])
    first, after, base = _logits(first_run, ids), _logits(second, ids), _logits(tiny_llama_dir, ids)
    assert not torch.allclose(first, base, atol=1e-3)  # the first run moved the model
    assert torch.allclose(after, first, atol=1e-4)
    meta = json.loads((second / "final" / "mmtune.json").read_text())
    rank = json.loads((second / "final" / "adapter_config.json").read_text())["r"]
    if adapter == "merge":  # a new adapter (the recipe's rank) on the merged first run, which final/ names as base
        assert rank == 8 and Path(meta["base_model"]["name"]) == (first_run / "final").resolve()
    else:  # the first run's adapter trained on: its rank, its base
        assert rank == 4 and Path(meta["base_model"]["name"]) == Path(tiny_llama_dir)


def test_init_from_errors_are_one_line(tiny_recipe, tmp_path):
    with pytest.raises(ConfigError, match=r"init_from.run: .*nowhere has no final/"):
        mmtune.train(tiny_recipe(init_from=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="init_from.adapter: 'continue' .* method.name must be 'lora'"):
        mmtune.load_recipe(None, [f"init_from.run={tmp_path}", "init_from.adapter=continue", "method.name=full"])


def test_two_stage_recipe_keeps_both_runs_chains_them_and_reports_forgetting(tmp_path, tiny_llama_dir,
                                                                             one_torch_thread):
    from mmtune.config.stages import plan_stages
    from mmtune.evaluation import evaluate
    from mmtune.models.run_outputs import load_for_inference
    from mmtune.sequential import run_stages
    from tests.conftest import sharegpt_rows, write_jsonl

    colours = [[{"role": "user", "content": f"Colour of {t}?"}, {"role": "assistant", "content": c}]
               for t, c in (("grass", "green"), ("sky", "blue"), ("snow", "white"), ("coal", "black"))]
    numbers = [[{"role": "user", "content": f"{a} times 2?"}, {"role": "assistant", "content": str(2 * a)}]
               for a in range(2, 8)]
    colour_file = write_jsonl(tmp_path / "colours.jsonl", sharegpt_rows(colours))
    number_file = write_jsonl(tmp_path / "numbers.jsonl", sharegpt_rows(numbers))
    out = tmp_path / "seq"
    raw = {
        "output_dir": str(out),
        "model": {"name": str(tiny_llama_dir)},
        "data": {"max_length": 64, "cache_dir": str(tmp_path / "cache")},
        "method": {"name": "full"},  # a random tiny model learns in a few steps only with all weights
        "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 2e-2, "warmup_steps": 0, "progress": False,
                  "tensorboard": False},
        "forgetting": {"general": [str(colour_file)], "metrics": ["loss", "exact"], "max_new_tokens": 4},
        "stages": [
            {"name": "colours", "data": {"datasets": [{"path": str(colour_file), "format": "sharegpt"}]}},
            {"name": "numbers", "data": {"datasets": [{"path": str(number_file), "format": "sharegpt"}]},
             "held_out": [str(number_file)], "train": {"max_steps": 8}},
        ],
    }
    plan = plan_stages(raw)
    result = run_stages(plan)
    assert result.trained == ["colours", "numbers"]
    first, second = out / "colours", out / "numbers"
    for run in (first, second):
        assert (run / "final" / "model.safetensors").is_file() and (run / "metrics.jsonl").is_file()
    assert plan.stages[1].recipe.train.max_steps == 8 and plan.stages[0].recipe.train.max_steps == 6
    config = mmtune.load_recipe(second / "config.yaml")
    assert Path(config.init_from.run) == first and config.init_from.adapter == "merge"
    meta = json.loads((second / "final" / "mmtune.json").read_text())
    assert Path(meta["base_model"]["name"]) == (first / "final").resolve()

    report = json.loads((out / "forgetting.json").read_text())
    numbers_set, colours_set = str(number_file), str(colour_file)
    assert report["metric"] == "loss" and report["stages"] == ["colours", "numbers"]
    assert report["sets"] == [numbers_set, colours_set] and set(report["tables"]) == {"loss", "exact"}
    table = report["table"]
    assert table["colours"][numbers_set] is None  # evaluated only from its own stage on
    assert table["colours"][colours_set] < 6.0  # learned in stage 1 (a random model starts near ln(49152) = 10.8)
    assert table["numbers"][numbers_set] < 6.0  # learned in stage 2
    for stage, run in (("colours", first), ("numbers", second)):  # each row is its own stage's model
        model, tokenizer = load_for_inference(str(run))
        loss = evaluate(model, tokenizer, colours_set, ["loss"], max_length=64, progress=False).metrics["loss"]["loss"]
        assert table[stage][colours_set] == pytest.approx(loss, rel=1e-5)
    assert table["numbers"][colours_set] != pytest.approx(table["colours"][colours_set], rel=1e-3)
    assert 0.0 <= report["tables"]["exact"]["numbers"][numbers_set] <= 1.0
    assert "| numbers |" in (out / "forgetting.md").read_text()

    again = run_stages(plan_stages(raw))  # resume: both stages finished, nothing trained or evaluated again
    assert again.trained == [] and json.loads((out / "forgetting.json").read_text()) == report
