"""Experiment tracking (``train.report_to``) and fused kernels (``train.kernels``): what a recipe asks for either
works or is one line naming the key, before any model loads."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from mmtune.config.loader import validate_recipe
from mmtune.config.schema import SftRecipe, TrainConfig
from mmtune.errors import ConfigError
from mmtune.models.kernels import check_kernels
from mmtune.training.metrics import MetricsLogger
from mmtune.training.setup import start_runtime
from mmtune.training.tracking import TRACKER_PACKAGES, check_trackers, flat_config


def test_tensorboard_false_drops_it_from_report_to_and_names_are_kept_once():
    assert TrainConfig().trackers() == ["tensorboard"]
    assert TrainConfig(tensorboard=False).trackers() == []
    assert TrainConfig(report_to=["wandb", "tensorboard", "wandb"], tensorboard=False).trackers() == ["wandb"]
    assert TrainConfig(report_to=[]).trackers() == [] and TrainConfig(report_to="none").trackers() == []
    assert TrainConfig(report_to="wandb").trackers() == ["wandb"]  # as TrainingArguments takes it
    with pytest.raises(ConfigError, match="report_to"):
        validate_recipe({"train": {"report_to": ["wandbb"]}})


def test_a_missing_tracker_package_is_one_line_naming_the_key_and_the_package(monkeypatch):
    missing = [name for name, (module, _) in TRACKER_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if not missing:  # every tracker is installed here: hide one, so the check runs whatever the machine has
        hidden = next(module for name, (module, _) in TRACKER_PACKAGES.items() if name != "tensorboard")
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == hidden else real_find_spec(m, *a))
        missing = [name for name, (module, _) in TRACKER_PACKAGES.items() if module == hidden]
    name = missing[0]
    package = TRACKER_PACKAGES[name][1]
    with pytest.raises(ConfigError) as err:
        start_runtime(TrainConfig(report_to=["tensorboard", name]))  # before the accelerator or any model
    message = str(err.value)
    assert "\n" not in message and "train.report_to" in message and f"pip install {package}" in message
    check_trackers(TrainConfig())  # tensorboard, the default, is a dependency of mmtune


def test_the_recipe_is_flattened_to_scalars_every_tracker_takes():
    flat = flat_config(SftRecipe.model_validate({"train": {"lr": 1e-3, "report_to": ["tensorboard"]}}))
    assert flat["train.lr"] == 1e-3 and flat["train.max_steps"] == "null"
    assert flat["train.report_to"] == '["tensorboard"]' and flat["method.lora.target_modules"] == "all-linear"
    assert all(isinstance(v, (str, int, float, bool)) for v in flat.values())


def test_other_processes_open_no_tracker_and_write_nothing(tmp_path):
    logger = MetricsLogger.open(SftRecipe.model_validate({"output_dir": str(tmp_path)}), None)
    logger.log({"step": 1, "loss": 1.0})
    logger.log_final(1, {"loss": 1.0})
    logger.close()
    assert logger.trackers == [] and list(tmp_path.iterdir()) == []


def test_liger_kernels_are_one_line_on_cpu_and_refused_by_the_edit_task():
    check_kernels("none", "cpu")
    with pytest.raises(ConfigError) as err:
        check_kernels("liger", "cpu")
    assert "\n" not in str(err.value) and str(err.value).startswith("train.kernels: 'liger'")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.kernels"):
            start_runtime(TrainConfig(kernels="liger", report_to=[]))  # said at start, before any model
    with pytest.raises(ConfigError, match="train.kernels"):
        validate_recipe({"task": "edit", "train": {"kernels": "liger"}})


def test_a_fused_head_loss_gets_the_head_and_only_the_trained_positions(tiny_llama_dir):
    """The hook ``train.kernels`` uses (Liger's fused linear cross-entropy on GPU), here with the same loss written
    plainly: the objective must hand it the output head and the hidden states of trained positions only."""
    import numpy as np
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from mmtune.data.packing import Collator
    from mmtune.training.objective import CausalLMObjective

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval()
    seen = []

    def plain_fused(head, hidden, targets):
        seen.append((head, hidden.shape[0]))
        return F.cross_entropy(head(hidden).float(), targets, reduction="sum")

    rng = np.random.default_rng(0)
    samples = [(rng.integers(5, 500, n), np.arange(n) >= n // 2) for n in (12, 20, 9)]
    batch = Collator(samples, pad_id=0)([[0, 1], [2]])
    with torch.no_grad():
        reference, n = CausalLMObjective(model)(batch)
        fused, n_fused = CausalLMObjective(model, plain_fused)(batch)
    assert seen == [(model.get_output_embeddings(), int(n))] and int(n) == batch.num_targets < 41
    assert int(n_fused) == int(n) and torch.allclose(fused, reference, rtol=1e-5)
