"""Multi-stage recipes: expansion over the base, the chain of init_from, replay, and their one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mmtune.config.schema import DataConfig
from mmtune.config.stages import load_training, plan_stages
from mmtune.errors import ConfigError
from tests.conftest import sharegpt_rows, write_jsonl


def _raw(**extra) -> dict:
    return {
        "output_dir": "runs/seq",
        "data": {"datasets": [{"card": "mmtune-instruct"}], "max_length": 256},
        "train": {"lr": 1e-3, "max_steps": 10},
        "stages": [
            {"name": "general"},
            {"name": "sums", "data": {"datasets": [{"path": "sums.jsonl", "format": "sharegpt", "task": "sums"}]},
             "train": {"max_steps": 20}, "replay": 0.2, "held_out": ["sums-test.jsonl"]},
        ],
        **extra,
    }


def test_stages_merge_over_the_base_and_chain_their_runs():
    plan = plan_stages(_raw(stage_adapter="continue", forgetting={"general": ["mmtune-instruct"]}))
    general, sums = (s.recipe for s in plan.stages)
    assert general.output_dir == str(Path("runs/seq/general")) and sums.output_dir == str(Path("runs/seq/sums"))
    assert general.init_from is None
    assert sums.init_from.run == general.output_dir and sums.init_from.adapter == "continue"
    assert (general.train.max_steps, sums.train.max_steps) == (10, 20) and sums.train.lr == 1e-3  # merged
    assert sums.data.max_length == 256 and [d.path for d in sums.data.datasets] == ["sums.jsonl"]  # lists replace
    assert [d.card for d in sums.data.replay] == ["mmtune-instruct"] and sums.data.replay_fraction == 0.2
    assert plan.stages[1].settings.held_out == ["sums-test.jsonl"]
    assert plan.forgetting.general == ["mmtune-instruct"] and plan.forgetting.metrics == ["loss"]


@pytest.mark.parametrize("change, message", [
    (lambda r: r["stages"][1].update(name="general"), r"stages\[1\] \(general\): name: another stage is named"),
    (lambda r: r["stages"][0].update(replay=0.3), r"stages\[0\] \(general\): replay: the first stage has no earlier"),
    (lambda r: r["stages"][1].update(output_dir="x"), r"stages\[1\] \(sums\): output_dir: set by the multi-stage"),
    (lambda r: r["stages"][1].update(init_from="runs/x"), r"stages\[1\] \(sums\): init_from: set by the multi-stage"),
    (lambda r: r["stages"][1].update(replay=1.5), r"stages\[1\]: replay: .*less than 1"),
    (lambda r: r["stages"][1]["train"].update(lr="fast"), r"stages\[1\] \(sums\): train.lr: expected a number"),
    (lambda r: r.update(stage_adapter="stack"), r"stage_adapter: expected one of 'merge' or 'continue'"),
    (lambda r: r.update(forgetting={"metrics": ["bleu"]}), r"forgetting.metrics.0: expected one of"),
    (lambda r: r.update(stages=[]), r"stages: List should have at least 1 item"),
])
def test_multi_stage_errors_are_one_line_naming_the_stage(change, message):
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError, match=message) as err:
        plan_stages(raw, source="seq.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("seq.yaml: ")


def test_a_plain_recipe_file_is_one_run_and_load_recipe_refuses_stages(tmp_path):
    import mmtune

    plain, staged = tmp_path / "plain.yaml", tmp_path / "staged.yaml"
    plain.write_text(yaml.safe_dump({"train": {"max_steps": 3}}))
    staged.write_text(yaml.safe_dump(_raw()))
    assert load_training(plain).train.max_steps == 3
    assert [s.recipe.train.max_steps for s in load_training(staged, ["train.max_steps=5"]).stages] == [5, 20]
    with pytest.raises(ConfigError, match="a multi-stage recipe"):
        mmtune.load_recipe(staged)


def test_replay_is_the_given_fraction_of_the_mixture_drawn_by_size(tmp_path, tokenizer):
    from mmtune.data.pipeline import build_conversation_data

    def conv(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    new = write_jsonl(tmp_path / "new.jsonl", sharegpt_rows([conv(f"{i} plus 1?", str(i + 1)) for i in range(24)]))
    old_a = write_jsonl(tmp_path / "a.jsonl", sharegpt_rows([conv(f"Say {i}", str(i)) for i in range(30)]))
    old_b = write_jsonl(tmp_path / "b.jsonl", sharegpt_rows([conv(f"Spell {i}", f"{i}!") for i in range(10)]))
    def entry(path, task):
        return {"path": str(path), "format": "sharegpt", "task": task}

    cfg = DataConfig(datasets=[entry(new, "new")], replay=[entry(old_a, "a"), entry(old_b, "b")],
                     replay_fraction=0.4, val_fraction=0.25, cache=False)
    data = build_conversation_data(tokenizer, cfg, seed=0)
    per_source = np.bincount(data.train.refs[:, 0], minlength=3)
    assert per_source[0] == 18  # 24 - 6 held out
    assert per_source[1:].sum() == 12  # 0.4 of the 18 + 12 = 30 samples
    assert list(per_source[1:]) == [9, 3]  # replayed sets in proportion to their sizes (30 : 10)
    assert set(data.val.refs[:, 0]) == {0}  # replayed sets hold nothing out: their held-out sets are their own stage's
    assert data.train.tasks == ("new", "a", "b") and {data.train.task(k) for k in range(len(data.train))} == {0, 1, 2}
    with pytest.raises(ValueError, match="data.replay and data.replay_fraction go together"):
        DataConfig(datasets=[entry(new, "new")], replay=[entry(old_a, "a")])


def test_shipped_sequential_sets_are_the_scripts_and_hold_out_unseen_questions():
    import importlib.util
    import json

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("make_sets", REPO / "scripts" / "make_sequential_sets.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    for name, draw_one, seed in (("mmtune-arith", make.arithmetic, 11), ("mmtune-units", make.unit_problem, 12)):
        train, test = make.draw(draw_one, seed)
        shipped = {split: [json.loads(line) for line in (REPO / "datasets" / name / f"{split}.jsonl").open()]
                   for split in ("train", "test")}
        assert shipped == {"train": train, "test": test}
        assert not {r["instruction"] for r in test} & {r["instruction"] for r in train}
    for row in [json.loads(line) for line in (REPO / "datasets/mmtune-arith/test.jsonl").open()]:
        a, op, b = row["instruction"].removeprefix("What is ").removesuffix("?").split()
        assert int(row["output"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[op]
