"""train.distributed and --nproc: the refusals that must be one line, and full weights swapped in for final/.

What needs several processes (DDP, FSDP on CPU, sharded checkpoints, resume) is in
tests/e2e/test_multiprocess.py; DeepSpeed needs CUDA, so only its refusal is tested here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmtune.cli import main
from mmtune.config.schema import TrainConfig
from mmtune.errors import ConfigError, TrainingError
from mmtune.training.distributed import accelerator_plugins, launch_processes
from mmtune.training.gathered import full_weights_in


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("choice", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_without_cuda_is_one_line_naming_the_key(choice):
    with pytest.raises(ConfigError, match=f"^train.distributed: '{choice}' needs ") as err:
        accelerator_plugins(TrainConfig(distributed=choice))
    assert "\n" not in str(err.value)


def test_a_recipe_that_contradicts_the_accelerate_launch_config_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what accelerate launch sets for its processes
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="train.distributed: 'ddp' but the accelerate launch config chose fsdp"):
        accelerator_plugins(TrainConfig(distributed="ddp"))
    assert accelerator_plugins(TrainConfig(distributed="fsdp")) == {}  # the launcher's plugin is used as it is


def test_fsdp_without_a_launcher_builds_accelerates_fsdp2_plugin(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    plugin = accelerator_plugins(TrainConfig(distributed="fsdp"))["fsdp_plugin"]
    assert plugin.fsdp_version == 2 and str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")
    assert accelerator_plugins(TrainConfig(distributed="ddp")) == {}


def test_nproc_inside_a_process_group_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="--nproc: this process is already one of"):
        launch_processes(2, ["train", "recipe.yaml"])


def test_nproc_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--nproc", "0", "recipe.yaml"])
    assert "--nproc: must be 1 or more, not 0" in capsys.readouterr().err


def test_a_sharded_checkpoint_in_an_unsharded_run_is_one_line(tmp_path):
    from mmtune.training.checkpoint import load_checkpoint
    from mmtune.training.setup import start_runtime

    (tmp_path / "sharded").mkdir()
    runtime = start_runtime(TrainConfig())
    with pytest.raises(TrainingError, match="resume it with the train.distributed it was written with"):
        load_checkpoint(tmp_path, runtime=runtime, model=nn.Linear(2, 2), optimizer=None, scheduler=None)


def test_full_weights_go_in_keeping_tied_parameters_tied_and_are_put_back():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied, as a decoder's input and output embeddings
    shard = model[0].weight
    full = {"0.weight": torch.ones(5, 3)}  # the gathered state dict may name a tied tensor once
    with full_weights_in(model, full):
        assert model[0].weight is model[1].weight and torch.equal(model[1].weight, torch.ones(5, 3))
    assert model[0].weight is shard and model[1].weight is shard
    with pytest.raises(TrainingError, match="'0.weight' is missing from the gathered state dict"):
        with full_weights_in(model, {}):
            pass
