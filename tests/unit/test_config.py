"""Recipes: every shipped YAML validates, overrides apply, every key is documented."""

from __future__ import annotations


import re
import typing

import pytest
import yaml
from pydantic import BaseModel

from mmtune.config.loader import _model_in, dump_recipe, load_recipe
from mmtune.config.media import BranchConfig
from mmtune.config.loader import validate_recipe as mmtune_validate
from mmtune.config.schema import TASK_RECIPES, SftRecipe
from mmtune.errors import ConfigError

from conftest import REPO

SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def test_there_are_shipped_recipes():
    assert any(p.name == "smollm2_lora.yaml" for p in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_round_trips(path, tmp_path):
    from mmtune.config.stages import load_stages
    from mmtune.data.sources import find_card

    staged = "stages" in yaml.safe_load(path.read_text())  # a multi-stage recipe: every stage is a recipe
    recipes = [stage.recipe for stage in load_stages(path).stages] if staged else [load_recipe(path)]
    for recipe in recipes:
        again = tmp_path / "resolved.yaml"
        again.write_text(dump_recipe(recipe))
        assert load_recipe(again) == recipe
        for spec in recipe.data.datasets:  # cards named by shipped recipes exist
            if spec.card:
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
    recipe = SftRecipe()
    assert recipe.model.name == "smollm2-135m-instruct"
    assert recipe.data.template == "auto" and recipe.data.packing is True
    assert recipe.method.name == "lora" and recipe.method.lora.target_modules == "all-linear"


def test_dataset_entry_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="exactly one"):
        load_recipe(None, ["data.datasets.0.path=a.jsonl", "data.datasets.0.card=b", "data.datasets.0.format=alpaca"])


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of the schema; a mapping's keys are written ``<name>`` (as the README does)."""
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        nested = _model_in(field.annotation)
        if nested is not None:
            keyed = typing.get_origin(field.annotation) is dict
            keys += _all_keys(nested, f"{dotted}.<name>." if keyed else f"{dotted}.")
    return keys


def _documented_as(key: str) -> str:
    """The README row of ``key``: the branch keys every modality shares (``encoder.*``, ``pieces.*``,
    ``connector.*`` and their methods) are documented once, on the image branch."""
    parts = key.split(".")
    if len(parts) > 3 and parts[1] == "media" and parts[2] != "image" and parts[3] in BranchConfig.model_fields:
        return ".".join([parts[0], "media", "image", *parts[3:]])
    return key


def test_configs_readme_documents_every_key():
    doc = (REPO / "configs" / "README.md").read_text()
    keys = sorted({k for recipe in TASK_RECIPES.values() for k in _all_keys(recipe)})
    missing = [k for k in keys if f"`{_documented_as(k)}`" not in doc]
    assert not missing, f"undocumented recipe keys: {missing}"


def test_recipes_with_the_former_vision_keys_still_load_and_dump_the_new_ones(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({
        "model": {"vision": {"encoder": {"kind": "open_clip", "pretrained": None}, "image_preprocess": "resize"}},
        "method": {"name": "frozen", "encoder": {"trainable": "lora", "lr": 1e-4}, "connector": {"trainable": "full"}},
        "data": {"datasets": [{"path": "d.json", "format": "llava", "image_folder": "imgs"}]},
    }))
    recipe = load_recipe(old)
    image = recipe.model.media.image
    assert image.image_preprocess == "resize" and image.encoder.pretrained is None
    assert recipe.method.media.image.encoder.trainable == "lora" and recipe.method.media.image.encoder.lr == 1e-4
    assert recipe.data.datasets[0].media_folder == "imgs"
    dumped = yaml.safe_load(dump_recipe(recipe))
    assert "vision" not in dumped["model"] and dumped["model"]["media"]["image"]["image_preprocess"] == "resize"
    assert "encoder" not in dumped["method"] and "image_folder" not in dumped["data"]["datasets"][0]
    both = {"model": {"vision": {}, "media": {"image": {}}}}
    with pytest.raises(ConfigError, match="'model.vision' and 'model.media.image' are the same setting"):
        mmtune_validate(both)


def test_every_branch_gets_its_component_methods_and_strays_are_refused():
    recipe = mmtune_validate({"model": {"media": {"image": {}}}})
    assert recipe.method.media.image.encoder.trainable == "frozen"
    assert recipe.method.media.image.connector.trainable == "full"
    assert mmtune_validate({}).method.media.image is None
    with pytest.raises(ConfigError, match="method.media.image: the model has no image branch"):
        mmtune_validate({"method": {"media": {"image": {"connector": {"trainable": "full"}}}}})
    with pytest.raises(ConfigError, match="no piece named"):
        mmtune_validate({"model": {"media": {"image": {}}}, "method": {"media": {"image": {"pieces": {"pos": {
            "trainable": "full"}}}}}})


def test_unknown_task_is_one_line():
    with pytest.raises(ConfigError, match="task: unknown task 'distill' \\(valid: sft, edit, hint\\)"):
        mmtune_validate({"task": "distill"})


def test_configs_readme_defaults_match_the_schema():
    """Each documented default (`key` | default | ...) equals the schema's default."""
    doc = (REPO / "configs" / "README.md").read_text()
    per_task = {name: recipe().model_dump(mode="json") for name, recipe in TASK_RECIPES.items()}
    defaults = per_task["sft"]
    checked = 0
    for line in doc.splitlines():
        if line.startswith("## "):  # a task's own section documents its recipe's defaults
            task = re.match(r"## Task `(\w+)`", line)
            defaults = per_task[task.group(1) if task else "sft"]
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


def test_a_runs_config_yaml_reads_back_with_its_cards_settings(tmp_path):
    from mmtune.data.sources import resolve_source

    (tmp_path / "data.json").write_text("[]")
    card = tmp_path / "set.yaml"
    card.write_text("path: data.json\nformat: llava\nmedia_folder: imgs\nprompt_erasure: {replace_with: Hi.}\n")
    recipe = mmtune_validate({"data": {"datasets": [{"card": str(card), "weight": 2.0}]}})
    dumped = tmp_path / "config.yaml"
    dumped.write_text(dump_recipe(recipe))
    again = resolve_source(load_recipe(dumped).data.datasets[0]).settings
    assert again == resolve_source(recipe.data.datasets[0]).settings
    assert again.path == str(tmp_path / "data.json") and again.media_folder == str(tmp_path / "imgs")
    assert again.format == "llava" and again.prompt_erasure.replace_with == "Hi."
    off = mmtune_validate({"data": {"datasets": [{"card": str(card), "prompt_erasure": None}]}})
    dumped.write_text(dump_recipe(off))
    assert resolve_source(load_recipe(dumped).data.datasets[0]).settings.prompt_erasure is None  # still off


def test_config_yaml_of_a_text_run_written_before_branches_still_loads(tmp_path):
    """Earlier runs wrote model.vision: null and the default method.encoder / method.connector into every run."""
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump({
        "output_dir": "runs/x", "model": {"name": "smollm2-135m-instruct", "vision": None},
        "data": {"datasets": [{"card": "mmtune-instruct", "image_folder": None}]},
        "method": {"name": "lora", "llm_lr": None, "encoder": {"trainable": "frozen", "lr": None},
                   "connector": {"trainable": "full", "lr": None}},
    }))
    recipe = load_recipe(old)
    assert recipe.model.branches() == {} and recipe.method.media.image is None
    with pytest.raises(ConfigError, match="method.connector \\(now method.media.image.connector\\) is set but the "
                                          "model has no image branch"):
        mmtune_validate({"method": {"connector": {"trainable": "full", "lr": 1e-3}}})
