"""Recipes: every shipped YAML validates, overrides apply, every key is documented."""

from __future__ import annotations


import pytest
import yaml
from pydantic import BaseModel

from mmtune.config.loader import _model_in, dump_recipe, load_recipe
from mmtune.config.schema import Recipe
from mmtune.errors import ConfigError

from conftest import REPO

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert any(p.name == "smollm2_lora.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_round_trips(path, tmp_path):
    recipe = load_recipe(path)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_recipe(recipe))
    assert load_recipe(again) == recipe
    for spec in recipe.data.datasets:  # cards named by shipped recipes exist
        if spec.card:
            from mmtune.data.sources import find_card

            assert find_card(spec.card).is_file()


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  max_steps: 10\n")
    recipe = load_recipe(path, ["train.max_steps=3", "train.lr=1e-5", "data.packing=false",
                                "method.lora.target_modules=[q_proj, v_proj]",
                                "data.datasets.0.path=x.jsonl", "data.datasets.0.format=alpaca"])
    assert recipe.train.max_steps == 3
    assert recipe.train.lr == pytest.approx(1e-5)
    assert recipe.data.packing is False
    assert recipe.method.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.data.datasets[0].format == "alpaca"


def test_defaults_live_in_the_schema():
    recipe = Recipe()
    assert recipe.model.name == "smollm2-135m-instruct"
    assert recipe.data.template == "auto" and recipe.data.packing is True
    assert recipe.method.name == "lora" and recipe.method.lora.target_modules == "all-linear"


def test_dataset_entry_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one"):
        load_recipe(None, ["data.datasets.0.path=a.jsonl", "data.datasets.0.card=b", "data.datasets.0.format=alpaca"])


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        nested = _model_in(field.annotation)
        if nested is not None:
            keys += _all_keys(nested, f"{dotted}.")
    return keys


def test_configs_readme_documents_every_key():
    doc = (REPO / "configs" / "README.md").read_text()
    missing = [k for k in _all_keys(Recipe) if f"`{k}`" not in doc]
    assert not missing, f"undocumented recipe keys: {missing}"


def test_configs_readme_defaults_match_the_schema():
    """Each documented default (`key` | default | ...) equals the schema's default."""
    doc = (REPO / "configs" / "README.md").read_text()
    defaults = Recipe().model_dump(mode="json")
    checked = 0
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`") or not cells[1].startswith("`"):
            continue
        key, documented = cells[0].strip("`"), yaml.safe_load(cells[1].split("`")[1])
        node = defaults
        for part in key.split("."):
            node = node[part] if isinstance(node, dict) and part in node else KeyError
        if node is KeyError or isinstance(node, dict):
            continue
        if isinstance(node, list) and documented == []:
            documented = []
        assert node == documented or (isinstance(node, list) and list(documented or []) == node), key
        checked += 1
    assert checked > 30
