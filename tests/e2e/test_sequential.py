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
