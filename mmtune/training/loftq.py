"""LoftQ initialisation (Li et al. 2023) without bitsandbytes: ``method.lora.init: loftq`` on any device.

LoftQ replaces each adapted base weight W by its quantized value Q(W) and
starts the adapter from the residual, so that Q(W) + BA ≈ W: fine-tuning then
begins close to the original model although its base is quantized. peft's
``loftq_init`` does that through bitsandbytes only (its pure-torch NF4
quantizer was removed in peft 0.20, and it computes on CUDA), so the
quantization is simulated here: NF4 per block of 64 (QLoRA's code book and
absmax scaling) or int8 per row (bitsandbytes' ``int8_vectorwise_quant``),
stored dequantized in the weights' own dtype. The alternation is peft's:
quantize the residual, take the residual's best rank-r factors by SVD, repeat.

Unlike peft, the factors are divided by the adapter's scaling (``alpha / r``,
or ``alpha / sqrt(r)`` with rsLoRA) so that the model's output, not only BA,
matches W at the start.

The adapter fits Q(W), which exists nowhere but in the trained model, so
``final/`` of a LoftQ run holds the merged weights Q(W) + BA (:func:`saves_merged`):
a plain transformers directory that ``load_for_inference``, ``mmtune export``
and ``init_from`` open as they open a full fine-tune. Saving the adapter
alone would be wrong (it does not fit the original base), and saving Q(W)
beside it would store a full model anyway, in a layout nothing else reads.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtune.config.schema import MethodConfig
from mmtune.errors import ConfigError

NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])
"""The 16 NF4 levels (QLoRA's normal-float code book, as bitsandbytes holds it)."""

NF4_BLOCK = 64
"""Weights sharing one absmax scale in NF4 (bitsandbytes' default block size)."""


def _nf4(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.reshape(-1)
    pad = (-flat.numel()) % NF4_BLOCK
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, NF4_BLOCK)
    scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(blocks.dtype).tiny)
    code = NF4_CODE.to(blocks)
    nearest = torch.bucketize(blocks / scale, (code[1:] + code[:-1]) / 2)  # index of the closest level
    return (code[nearest] * scale).reshape(-1)[:flat.numel()].view_as(weight)


def _int8_rows(weight: torch.Tensor) -> torch.Tensor:
    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny) / 127
    return torch.round(weight / scale).clamp(-127, 127) * scale


def quantized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Q(W): ``weight`` (2-D, float32) quantized to ``bits`` (4: NF4 per block, 8: int8 per row), dequantized."""
    return _nf4(weight) if bits == 4 else _int8_rows(weight)


@torch.no_grad()
def loftq_factors(weight: torch.Tensor, *, bits: int, rank: int, iterations: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Q, L, R)`` with Q quantized and ``Q + L @ R ≈ weight`` (L: [out, rank], R: [rank, in]), all float32."""
    weight = weight.float()
    target = weight
    for _ in range(iterations):
        q = quantized(target, bits)
        u, s, vh = torch.linalg.svd(weight - q, full_matrices=False)
        root = s[:rank].sqrt()
        left, right = u[:, :rank] * root, root[:, None] * vh[:rank]
        target = weight - left @ right  # the next quantization leaves out what the adapter already holds
    return q, left, right


def apply_loftq(model: nn.Module, *, bits: int, iterations: int, key: str = "method.lora.init") -> None:
    """Re-initialise every LoRA layer peft put on ``model`` (adapter ``default``, B = 0) the LoftQ way, in place:
    the base weight becomes Q(W), A and B the residual's factors divided by the adapter's scaling."""
    from peft.tuners.lora import LoraLayer

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        base = layer.get_base_layer()
        if not isinstance(base, nn.Linear) or "default" not in layer.lora_A:
            raise ConfigError(f"{key}: loftq initialises LoRA on Linear layers only; {name} is "
                              f"{type(base).__name__} (leave it out of target_modules)")
        if layer.use_dora["default"]:
            raise ConfigError("method.lora.use_dora: DoRA's magnitudes are taken from the weights before LoftQ "
                              "replaces them; use one of loftq and use_dora")
        weight = base.weight
        q, left, right = loftq_factors(weight, bits=bits, rank=layer.r["default"], iterations=iterations)
        root = layer.scaling["default"] ** 0.5
        with torch.no_grad():
            weight.copy_(q.to(weight.dtype))
            layer.lora_A["default"].weight.copy_(right / root)
            layer.lora_B["default"].weight.copy_(left / root)


def check_loftq(method: MethodConfig) -> None:
    """What LoftQ cannot be combined with, refused in one line before any model loads."""
    if method.lora.init != "loftq":
        return
    if method.name == "qlora":
        raise ConfigError("method.lora.init: loftq with method.name: qlora would quantize the base twice (LoftQ "
                          "quantizes the unquantized base itself); use method.name: lora, whose LoftQ base holds "
                          "Q(W) dequantized")


def saves_merged(method: MethodConfig) -> bool:
    """Whether the LLM's ``final/`` holds merged weights rather than the adapter (a LoftQ run: see the module)."""
    return method.name == "lora" and method.lora.init == "loftq"

