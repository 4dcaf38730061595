"""How the processes of a run share the model: ``train.distributed``, and ``mmtune train --nproc N``.

The recipe chooses the sharding (``ddp``, ``fsdp``, ``deepspeed_zero2``, ``deepspeed_zero3``), so one
YAML says how a run is laid out however it is started; ``auto`` follows the launcher (``accelerate launch
--config_file configs/accelerate/...``, or DDP under torchrun). The named layouts build the accelerate
plugin with the same settings as the shipped launcher configs in ``configs/accelerate/``, which
multi-node runs start with. ``--nproc N`` re-starts the command under torchrun on this machine, so one
machine needs no separate launcher.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from mmtune.config.schema import TrainConfig
from mmtune.errors import ConfigError

_ACCELERATE_LAUNCH_CHOICE = {"ACCELERATE_USE_FSDP": "fsdp", "ACCELERATE_USE_DEEPSPEED": "deepspeed"}
"""Environment flags ``accelerate launch`` sets when its config chose FSDP or DeepSpeed."""


def launched_by_accelerate() -> bool:
    """``accelerate launch`` sets this for the processes it starts (torchrun and a plain start do not)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


def launcher_choice() -> str | None:
    """``fsdp`` / ``deepspeed`` when ``accelerate launch``'s config chose one, else None."""
    if not launched_by_accelerate():
        return None
    return next((name for flag, name in _ACCELERATE_LAUNCH_CHOICE.items()
                 if os.environ.get(flag, "false").lower() == "true"), None)


def accelerator_plugins(train: TrainConfig) -> dict:
    """The ``Accelerator`` keyword arguments for ``train.distributed`` (none for ``auto`` and ``ddp``)."""
    choice = train.distributed
    launched = launcher_choice()
    if choice != "auto" and launched is not None and not choice.startswith(launched):
        raise ConfigError(f"train.distributed: '{choice}' but the accelerate launch config chose {launched}; "
                          "set train.distributed: auto to follow the launcher, or launch without that config")
    if choice in ("auto", "ddp") or launched is not None:
        return {}
    if choice == "fsdp":
        return {"fsdp_plugin": fsdp_plugin()}
    return {"deepspeed_plugin": deepspeed_plugin(train)}


def build_accelerator(train: TrainConfig, mixed_precision: str):
    """The ``Accelerator`` of this process, laid out as ``train.distributed`` says."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    # An earlier run of this process may have chosen FSDP or DeepSpeed: accelerate keeps that in the
    # environment and the process state, which outlive a run; only a launcher's choice stays.
    if not launched_by_accelerate():
        for flag in _ACCELERATE_LAUNCH_CHOICE:
            os.environ.pop(flag, None)
    if PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:  # set by _fsdp_on_cpu
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU
    plugins = accelerator_plugins(train)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), **plugins)
    if "fsdp_plugin" in plugins and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _fsdp_on_cpu(plugins["fsdp_plugin"])
    return accelerator


def _fsdp_on_cpu(plugin) -> None:
    """Make accelerate run FSDP2 over gloo when the processes have no GPU.

    accelerate turns an FSDP plugin into ``DistributedType.FSDP`` only for GPU-class devices
    (``AcceleratorState.__init__``); on CPU processes it keeps ``MULTI_CPU`` and would silently train
    DDP. FSDP2 (``fully_shard``) itself runs on CPU over gloo, and everything after the distributed type
    (``prepare``, gradient clipping, ``get_state_dict``, ``save_state`` / ``load_state``) is accelerate's
    own FSDP2 path, the one GPU runs take. Both of accelerate's shared states are marked: every
    ``AcceleratorState()`` re-reads ``PartialState``'s.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state = AcceleratorState()
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin


def fsdp_plugin():
    """FSDP2, fully sharded, one unit per decoder layer (the objective's ``_no_split_modules``).

    A sharded state dict: each process writes and reads only its shards of a checkpoint (torch's
    distributed checkpoint through ``accelerator.save_state``); ``final/`` is gathered separately.
    """
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT", cpu_ram_efficient_loading=False, activation_checkpointing=False,
    )


def deepspeed_plugin(train: TrainConfig):
    """ZeRO-2 or ZeRO-3 as in ``configs/accelerate/zero{2,3}.yaml``; DeepSpeed needs CUDA GPUs."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"train.distributed: '{train.distributed}' needs DeepSpeed: pip install 'mmtune[gpu]'")
    if not torch.cuda.is_available():
        raise ConfigError(f"train.distributed: '{train.distributed}' needs CUDA GPUs (DeepSpeed does not train on "
                          "CPU); use fsdp or ddp here")
    from accelerate import DeepSpeedPlugin

    stage = 3 if train.distributed == "deepspeed_zero3" else 2
    return DeepSpeedPlugin(zero_stage=stage, gradient_clipping=train.max_grad_norm or 0.0,
                           zero3_init_flag=False, zero3_save_16bit_model=stage == 3,
                           offload_optimizer_device="none", offload_param_device="none")


def launch_processes(nproc: int, argv: list[str]) -> int:
    """Run ``mmtune ARGV`` as ``nproc`` processes of this machine under torchrun; its exit status.

    torchrun (``torch.distributed.run``) gives every process its rank and rendezvous; over gloo on a
    CPU, NCCL on GPUs. ``--standalone``: one machine, a free port chosen by torchrun.
    """
    if "LOCAL_RANK" in os.environ:  # already one of several processes: never launch again
        raise ConfigError("--nproc: this process is already one of a torchrun / accelerate launch group; "
                          "drop --nproc or the outer launcher")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "mmtune.cli", *argv]
    launcher = subprocess.Popen(command)
    try:
        return launcher.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the processes too: let torchrun stop them before returning
        launcher.wait()
        raise


def shards_state(accelerator) -> bool:
    """Whether each process holds only its part of the weights or optimizer state (FSDP, any DeepSpeed stage).

    Such state is saved and restored by every process together (``accelerator.save_state`` /
    ``load_state``), and ``final/`` is gathered first; DDP's replicas are read by the main process alone.
    """
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
