"""How a step turns the loss into new weights: the loop's one seam for optimizers that differ in kind.

The loop calls ``backward(loss)`` per micro-batch, then ``step()`` once per accumulation window (it returns the
gradient norm before clipping, for the log), and sees the same thing whichever rule runs:

* :class:`ClipAndStep`: fused AdamW as usual: gradients accumulate over the window, are clipped by global
  norm, one optimizer step. accelerate wraps the optimizer (mixed precision's loss scaling, DeepSpeed).
* :class:`FusedBackward`: LOMO / AdaLomo (``method.name: lomo``, :mod:`mmtune.training.lomo`): the weights
  move inside backward, so ``step()`` has nothing left to do. accelerate wraps only the model: its fp16
  ``GradScaler`` needs every gradient at once, which LOMO never holds (it scales the loss itself).

Either way ``optimizer`` is what the schedule sets learning rates on and what checkpoints save.
"""

from __future__ import annotations

from typing import Protocol

import torch
from accelerate.utils import DistributedType
from torch import nn

from mmtune.config.schema import TrainConfig
from mmtune.errors import ConfigError
from mmtune.training.lomo import FusedLomo
from mmtune.training.setup import Runtime
from mmtune.training.tasks.base import TaskRun


class UpdateRule(Protocol):
    optimizer: torch.optim.Optimizer

    def prepare(self, objective: nn.Module) -> nn.Module:
        """Hand the objective (and the optimizer, where that applies) to accelerate; returns the model to run."""
        ...

    def backward(self, loss: torch.Tensor, ends_window: bool = True) -> None:
        """Backward of one micro-batch's share of the window's loss; ``ends_window`` on its last micro-batch."""
        ...

    def step(self) -> torch.Tensor:
        """Finish the step (clip, update); the gradient norm before clipping. The loop clears the gradients
        afterwards, once a method that reads them (AdaLoRA's allocation) has."""
        ...


class ClipAndStep:
    """AdamW after backward; under DeepSpeed, its engine clips and steps (``step`` then only reads the norm).

    DeepSpeed divides every micro-batch's loss by its ``gradient_accumulation_steps`` and steps at what it is
    told is the accumulation boundary. mmtune's loss is already divided by the window's targets, so ``backward``
    multiplies that division away and marks the window's last micro-batch as the boundary: one DeepSpeed step
    per window, with the same gradient as without DeepSpeed.
    """

    def __init__(self, accelerator, optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
                 deepspeed_accumulation: int = 1) -> None:
        self.accelerator, self.optimizer, self.max_grad_norm = accelerator, optimizer, max_grad_norm
        self.params: list[nn.Parameter] = []
        """What clipping reads: the trainable parameters of the prepared model (set by ``prepare``)."""
        self.deepspeed_accumulation = deepspeed_accumulation

    def prepare(self, objective: nn.Module) -> nn.Module:
        model, self.optimizer = self.accelerator.prepare(objective, self.optimizer)
        # Read after prepare: FSDP2 replaces the parameters by sharded ones (DTensors), which clipping must see.
        self.params = [p for p in model.parameters() if p.requires_grad]
        return model

    def backward(self, loss: torch.Tensor, ends_window: bool = True) -> None:
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            self.accelerator.deepspeed_engine_wrapped.backward(loss * self.deepspeed_accumulation,
                                                               sync_gradients=ends_window)
        else:
            self.accelerator.backward(loss)

    def step(self) -> torch.Tensor:
        norm = self.accelerator.clip_grad_norm_(self.params, self.max_grad_norm or float("inf"))
        self.optimizer.step()
        return norm


class FusedBackward:
    def __init__(self, accelerator, optimizer: FusedLomo) -> None:
        self.accelerator, self.optimizer = accelerator, optimizer

    def prepare(self, objective: nn.Module) -> nn.Module:
        return self.accelerator.prepare(objective)

    def backward(self, loss: torch.Tensor, ends_window: bool = True) -> None:
        self.optimizer.fused_backward(loss)

    def step(self) -> torch.Tensor:
        return self.optimizer.step()


def build_update_rule(task: TaskRun, train: TrainConfig, runtime: Runtime) -> UpdateRule:
    """AdamW, or LOMO when the task asks for it (``TaskRun.lomo``); a setting LOMO cannot run under is refused."""
    if task.lomo is None:
        adamw = torch.optim.AdamW(task.param_groups, lr=train.lr, betas=train.betas, fused=True)  # CPU and CUDA kernels
        return ClipAndStep(runtime.accelerator, adamw, train.max_grad_norm, train.grad_accum_steps)
    deepspeed = runtime.accelerator.state.deepspeed_plugin is not None
    if runtime.num_processes > 1 or deepspeed:
        setting = "DeepSpeed" if deepspeed else f"{runtime.num_processes} processes"
        raise ConfigError(f"method.name: lomo runs in one process without DeepSpeed (each weight moves inside "
                          f"backward, before gradients could be averaged across processes); this run has {setting}")
    fp16 = runtime.mixed_precision == "fp16" or any(p.dtype == torch.float16 for g in task.param_groups
                                                   for p in g["params"])
    lomo = FusedLomo(task.param_groups, task.lomo, lr=train.lr, max_grad_norm=train.max_grad_norm, scale_loss=fp16)
    return FusedBackward(runtime.accelerator, lomo)
