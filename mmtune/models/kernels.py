"""Fused GPU kernels for the LLM (``train.kernels``): Liger's, through its own patching API.

Liger (``liger-kernel``) replaces a causal LM's RMSNorm, rotary embedding and
SwiGLU MLP with Triton kernels, per model type (``MODEL_TYPE_TO_APPLY_LIGER_FN``,
applied to the loaded instance by ``_apply_liger_kernel_to_instance``), and
offers a fused linear cross-entropy that never materialises the
``[tokens, vocab]`` logits. mmtune computes its own loss (summed over trained
tokens only, :mod:`mmtune.training.objective`), so Liger's patched ``forward``
with the fused loss is left off and the objective calls the fused loss itself
(:func:`liger_head_loss`) on the trained positions.

What cannot work is said in one line before the model loads
(:func:`check_kernels`): no CUDA device (Triton kernels), no package, and, once
the model is loaded, a model type Liger has no kernels for (Liger itself would
only log that and carry on unpatched).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import torch
from torch import nn

from mmtune.errors import ConfigError

log = logging.getLogger("mmtune")

HeadLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(output head, hidden [n, d], targets [n]) -> summed cross-entropy``."""


def check_kernels(kernels: str, device_type: str) -> None:
    """One line when ``train.kernels`` cannot run here (checked before the model loads)."""
    if kernels == "none":
        return
    if device_type != "cuda":
        raise ConfigError(f"train.kernels: '{kernels}' runs Triton kernels on a CUDA GPU; this run is on "
                          f"{device_type} (set train.kernels: none)")
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("train.kernels: 'liger' needs the liger-kernel package "
                          "(pip install liger-kernel, or pip install 'mmtune[gpu]')")


def apply_kernels(llm: nn.Module, kernels: str, device_type: str) -> HeadLoss | None:
    """Patch ``llm`` (a transformers causal LM, before peft wraps it) with ``kernels``; the fused head loss the
    objective should use, or ``None`` for the plain one."""
    check_kernels(kernels, device_type)
    if kernels == "none":
        return None
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = llm.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"train.kernels: liger has no kernels for model type '{model_type}' (it has: "
                          f"{', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}); set train.kernels: none")
    _apply_liger_kernel_to_instance(model=llm, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    log.info("kernels: liger (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) on %s", model_type)
    return liger_head_loss(getattr(llm.config, "final_logit_softcapping", None))


def liger_head_loss(softcap: float | None) -> HeadLoss:
    """Liger's fused linear cross-entropy, summed: the output head's matmul and the loss in chunks, without the
    logits. Only for a plain ``nn.Linear`` head (a LoRA-wrapped head falls back to the objective's own)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=softcap)

    def loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return fused(head.weight, hidden, targets, head.bias)

    return loss
