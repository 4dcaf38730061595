"""Fine-tuning methods: which parameters train, and with which optimizer settings.

``full`` trains everything; ``freeze`` trains parameters whose names match
``method.trainable``; ``lora`` (with DoRA / rsLoRA options) and ``qlora`` go
through peft. What trains is decided here, explicitly, and logged as a table.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from mmtune.config.schema import MethodConfig, ParamGroup, TrainConfig
from mmtune.errors import ConfigError

log = logging.getLogger(__name__)


def qlora_quantization_config(device_type: str):
    """The 4-bit NF4 config for QLoRA, or a clear error where it cannot run."""
    if device_type != "cuda":
        raise ConfigError("method.name: qlora needs a CUDA GPU (4-bit NF4 through bitsandbytes); use 'lora' on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("method.name: qlora needs bitsandbytes: pip install 'mmtune[gpu]'")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def apply_method(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    """Return the model to train, with ``requires_grad`` set per the method."""
    if cfg.name == "full":
        model.requires_grad_(True)
        return model
    if cfg.name == "frozen":
        model.requires_grad_(False)
        return model
    if cfg.name == "freeze":
        patterns = [re.compile(p) for p in cfg.trainable]
        matched = 0
        for name, param in model.named_parameters():
            param.requires_grad_(any(p.search(name) for p in patterns))
            matched += param.requires_grad
        if matched == 0:
            raise ConfigError(f"method.trainable: no parameter name matches {cfg.trainable}")
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.name == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = cfg.lora
    peft_cfg = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ConfigError(f"method.lora: {exc}") from None


@dataclass
class GroupSummary:
    name: str
    params: int
    lr: float
    weight_decay: float


COMPONENT_PATTERNS = {"encoder": r"^lm\.encoder\.", "connector": r"^lm\.connector\.", "llm": r"^lm\.llm\."}
"""Parameter-name patterns of a multimodal model's components, as named inside the training objective."""


def component_groups(method: MethodConfig, multimodal: bool) -> list[ParamGroup]:
    """Per-component learning rates as parameter groups (after the user's own patterns)."""
    groups = []
    if multimodal:
        for name in ("encoder", "connector"):
            part = getattr(method, name)
            if part.lr is not None and part.trainable != "frozen":
                groups.append(ParamGroup(pattern=COMPONENT_PATTERNS[name], lr=part.lr))
    if method.llm_lr is not None and method.name != "frozen":
        groups.append(ParamGroup(pattern=COMPONENT_PATTERNS["llm"] if multimodal else r"^lm\.", lr=method.llm_lr))
    return groups


def param_groups(model: nn.Module, method: MethodConfig, train: TrainConfig, *,
                 multimodal: bool = False) -> tuple[list[dict], list[GroupSummary]]:
    """Optimizer groups: per ``method.param_groups`` pattern (first match wins), then the rest.

    Biases and norm weights (1-D tensors) get no weight decay, as is standard.
    """
    compiled = [(re.compile(g.pattern), g) for g in [*method.param_groups, *component_groups(method, multimodal)]]
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    settings: dict[str, tuple[float, float]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((g for rx, g in compiled if rx.search(name)), None)
        key = group.pattern if group else "default"
        lr = group.lr if group and group.lr is not None else train.lr
        wd = group.weight_decay if group and group.weight_decay is not None else train.weight_decay
        settings[key] = (lr, wd)
        buckets.setdefault((key, param.ndim >= 2), []).append(param)
    if not settings:
        raise ConfigError("method: nothing to train (every component is frozen)")
    for rx, g in compiled:
        if g.pattern not in settings:
            raise ConfigError(f"method.param_groups: pattern '{g.pattern}' matches no trainable parameter")
    groups, summary = [], []
    for (key, decays), params in buckets.items():
        lr, wd = settings[key]
        groups.append({"params": params, "lr": lr, "weight_decay": wd if decays else 0.0, "name": key})
    for key, (lr, wd) in settings.items():
        n = sum(p.numel() for (k, _), ps in buckets.items() if k == key for p in ps)
        summary.append(GroupSummary(key, n, lr, wd))
    return groups, summary


def trainable_table(model: nn.Module) -> list[str]:
    """One line per top-level component: trainable / total parameters."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        parts = name.split(".")
        # Skip wrapper prefixes (peft's base_model.model., our lm.) to name real components.
        while parts and parts[0] in ("lm", "base_model", "model") and len(parts) > 2:
            parts = parts[1:]
        comp = parts[0]
        entry = rows.setdefault(comp, [0, 0])
        entry[1] += param.numel()
        entry[0] += param.numel() if param.requires_grad else 0
    total_t = sum(v[0] for v in rows.values())
    total = sum(v[1] for v in rows.values())
    lines = [f"{'component':<24}{'trainable':>14}{'total':>14}"]
    for comp, (t, n) in rows.items():
        lines.append(f"{comp:<24}{t:>14,}{n:>14,}")
    lines.append(f"{'all':<24}{total_t:>14,}{total:>14,}  ({100 * total_t / max(total, 1):.2f}% trainable)")
    return lines


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute decoder-layer activations in backward (non-reentrant: works with frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
