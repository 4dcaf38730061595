"""Full weights for ``final/`` when each process holds only shards of them (FSDP, DeepSpeed ZeRO-3).

A task writes ``final/`` from a plain module (``save_pretrained``, peft's adapter files, media branch
files), reading its parameters. Sharded, those parameters are each process's pieces (FSDP2's DTensors,
ZeRO-3's empty placeholders), so the weights are first gathered with accelerate's
``get_state_dict`` (a collective: every process takes part; the full tensors arrive on the main
process, on CPU) and put in place of the pieces while ``final/`` is written. Tied parameters stay
tied: each distinct parameter gets one full tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from mmtune.errors import TrainingError


@contextmanager
def gathered_weights(accelerator, prepared: nn.Module) -> Iterator[nn.Module]:
    """The unwrapped model, holding full weights on the main process for the block (every process enters)."""
    model = accelerator.unwrap_model(prepared)
    if not params_are_sharded(accelerator):
        yield model
        return
    full = accelerator.get_state_dict(prepared)
    if not accelerator.is_main_process:
        yield model
        return
    with full_weights_in(model, full):
        yield model


def params_are_sharded(accelerator) -> bool:
    """FSDP shards parameters; DeepSpeed only from ZeRO stage 3 (stages 1-2 shard optimizer state and gradients)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return (accelerator.distributed_type == DistributedType.DEEPSPEED
            and accelerator.state.deepspeed_plugin.zero_stage == 3)


@contextmanager
def full_weights_in(model: nn.Module, full: dict) -> Iterator[nn.Module]:
    """``model`` with ``full``'s tensors in place of its parameters for the block; then its own again."""
    places = [(f"{prefix}.{name}" if prefix else name, module, name, param)
              for prefix, module in model.named_modules(remove_duplicate=False)
              for name, param in module._parameters.items() if param is not None]
    names: dict[int, list[str]] = {}
    for key, _, _, param in places:  # a tied parameter has several names; the state dict may keep one
        names.setdefault(id(param), []).append(key)
    replacement: dict[int, nn.Parameter] = {}
    for key, _, _, param in places:
        if id(param) not in replacement:
            found = next((k for k in names[id(param)] if k in full), None)
            if found is None:
                raise TrainingError(f"gathering the sharded weights for final/: '{key}' is missing from the "
                                    "gathered state dict")
            replacement[id(param)] = nn.Parameter(full[found], requires_grad=param.requires_grad)
    for _, module, name, param in places:
        module._parameters[name] = replacement[id(param)]
    try:
        yield model
    finally:
        for _, module, name, param in places:
            module._parameters[name] = param
