"""Process setup for a run: the accelerator, its precision, DeepSpeed's batch settings, who prints.

Kept out of the loop so the loop reads as the algorithm. Launch: one process
with ``mmtune train``; several on one machine with ``mmtune train --nproc N``
(torchrun underneath; CPU: gloo; GPU: NCCL), or ``torchrun`` / ``accelerate
launch -m mmtune.cli train ...`` (several machines). How the processes share
the model is ``train.distributed`` (``mmtune.training.distributed``). On a
machine without a GPU, ``accelerate launch`` starts one process whatever
``--num_processes`` says; use ``--nproc`` or torchrun there. A missing tracker
package (``train.report_to``) or an impossible ``train.kernels`` is said here,
before any model loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mmtune.config.schema import TrainConfig
from mmtune.models.kernels import check_kernels
from mmtune.training.tracking import check_trackers
from mmtune.training.distributed import build_accelerator, launched_by_accelerate

log = logging.getLogger("mmtune")


@dataclass
class Runtime:
    """The accelerator of this process and what the loop and tasks ask of it."""

    accelerator: object
    mixed_precision: str

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def device_type(self) -> str:
        return self.accelerator.device.type

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def main_process_first(self):
        """The main process runs the block first (it fills caches), then the others."""
        return self.accelerator.main_process_first()

    def gather(self, obj) -> list:
        """``obj`` of every process, in process order (a picklable object; one collective call)."""
        if self.num_processes == 1:
            return [obj]
        out = [None] * self.num_processes
        torch.distributed.all_gather_object(out, obj)
        return out


def resolve_mixed_precision(name: str) -> str:
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def start_runtime(train: TrainConfig) -> Runtime:
    """A fresh accelerator for this run (several runs may share one Python process)."""
    from accelerate.state import AcceleratorState

    check_trackers(train)  # a missing tracker package is said before any model loads
    mixed = resolve_mixed_precision(train.mixed_precision)
    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision; a notebook or script may train several recipes in one process, so start each
    # run from a clean accelerator state (the distributed process state is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = build_accelerator(train, mixed)
    check_kernels(train.kernels, accelerator.device.type)  # said before any model loads
    if not accelerator.is_main_process:  # one process reports: transformers' bars and notes only on the main one
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if launched_by_accelerate() and accelerator.num_processes == 1 and not torch.cuda.is_available():
        log.warning("accelerate launch started 1 process: without a GPU it starts one whatever --num_processes "
                    "says. For N CPU processes: mmtune train --nproc N RECIPE.yaml (or torchrun --nproc_per_node N "
                    "-m mmtune.cli train RECIPE.yaml)")
    return Runtime(accelerator, mixed)


def fill_deepspeed_config(runtime: Runtime, train: TrainConfig) -> None:
    """DeepSpeed cannot infer micro-batch size and accumulation without a DataLoader: set them from the recipe."""
    plugin = runtime.accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = train.micro_batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = train.grad_accum_steps
