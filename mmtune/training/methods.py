"""Fine-tuning methods: which parameters train, and with which optimizer settings.

For the LLM: ``full`` and ``lomo`` train everything; ``freeze`` trains parameters whose
names match ``method.trainable``; ``lora`` (with DoRA / rsLoRA / PiSSA / OLoRA / LoftQ /
LoRA+ options) and ``qlora`` go through peft, and so does ``peft``, any peft
method by name (``mmtune.training.peft_methods``). Every other component (a
branch's encoder, pieces and connector) is ``frozen``, ``full``, ``lora`` or ``peft``. What trains is decided
here, explicitly, and logged as a table per component.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass

import torch
from torch import nn

from mmtune.config.schema import ComponentMethod, LoraConfig, MethodConfig, TrainConfig
from mmtune.errors import ConfigError
from mmtune.training.loftq import apply_loftq, check_loftq
from mmtune.training.peft_methods import apply_peft_method, inject_component_peft

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


def lora_init(lora: LoraConfig) -> bool | str:
    """peft's ``init_lora_weights`` for ``method.lora.init``; LoftQ starts as ``default`` and is applied after
    injection (``mmtune.training.loftq``: peft's own needs bitsandbytes on CUDA)."""
    return True if lora.init in ("default", "loftq") else lora.init


def _loftq_if_asked(model: nn.Module, lora: LoraConfig) -> None:
    if lora.init == "loftq":
        apply_loftq(model, bits=lora.loftq.bits, iterations=lora.loftq.iterations)


def apply_method(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    """Return the model to train, with ``requires_grad`` set per the method."""
    if cfg.name in ("full", "lomo"):  # lomo: full tuning, its update fused into backward (training.lomo)
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
    if cfg.name == "peft":
        return apply_peft_method(model, cfg.peft)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_loftq(cfg)
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
        init_lora_weights=lora_init(lora),
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ConfigError(f"method.lora: {exc}") from None
    _loftq_if_asked(model, lora)
    return model


@dataclass
class GroupSummary:
    name: str
    params: int
    lr: float
    weight_decay: float


@dataclass
class Component:
    """A named part of the model being trained (``llm``, ``image.encoder`` ...), for learning rates and the table."""

    name: str
    module: nn.Module
    trainable: str
    """How it trains: a method name (``lora``, ``full``, ``frozen`` ...)."""
    lr: float | None = None
    """Its learning rate (None: ``train.lr``)."""


def apply_component_method(module: nn.Module, method: ComponentMethod, lora: LoraConfig, name: str,
                           key: str | None = None) -> None:
    """Freeze, fully train, put LoRA on every Linear layer, or inject a peft method into one component (logged).
    ``key``: the recipe key of its method, for errors (default ``method.media.<name>``)."""
    if method.trainable == "frozen":
        module.requires_grad_(False)
    elif method.trainable == "full":
        module.requires_grad_(True)
    elif method.trainable == "peft":
        inject_component_peft(module, method.peft, name)
    else:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        targets = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear) and n})
        if not targets:
            raise ConfigError(f"{key or f'method.media.{name}'}.trainable: lora needs Linear layers; this component "
                              "has none")
        module.requires_grad_(False)
        inject_adapter_in_model(PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                               target_modules=targets, use_dora=lora.use_dora,
                                               use_rslora=lora.use_rslora, init_lora_weights=lora_init(lora)),
                                module)
        _loftq_if_asked(module, lora)
    trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info("%s: %s (%s trainable parameters)", name, method.trainable, f"{trained:,}")


def _owner(model: nn.Module, components: list[Component]) -> dict[int, Component]:
    """Parameter id -> the component holding it."""
    return {id(p): c for c in components for p in c.module.parameters()}


def is_lora_b(name: str) -> bool:
    """A LoRA B matrix, by peft's parameter names (``lora_B``, ``lora_embedding_B``)."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def param_groups(model: nn.Module, method: MethodConfig, train: TrainConfig,
                 components: list[Component] = ()) -> tuple[list[dict], list[GroupSummary]]:
    """Optimizer groups: per ``method.param_groups`` pattern (first match wins), then per component, then the rest.

    Components are matched by the parameters they hold, not by name patterns.
    Biases and norm weights (1-D tensors) get no weight decay, as is standard.
    LoRA+ (``method.lora.loraplus_lr_ratio``): each group's LoRA B matrices form a group of their own with
    that many times its learning rate (as peft's ``create_loraplus_optimizer`` does).
    """
    compiled = [(re.compile(g.pattern), g) for g in method.param_groups]
    owner = _owner(model, [c for c in components if c.lr is not None])
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    settings: dict[str, tuple[float, float]] = {}
    matched, lora_b = set(), 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((g for rx, g in compiled if rx.search(name)), None)
        if group is not None:
            key = group.pattern
            matched.add(key)
            lr = group.lr if group.lr is not None else train.lr
            wd = group.weight_decay if group.weight_decay is not None else train.weight_decay
        elif id(param) in owner:
            key, lr, wd = owner[id(param)].name, owner[id(param)].lr, train.weight_decay
        else:
            key, lr, wd = "default", train.lr, train.weight_decay
        if method.lora.loraplus_lr_ratio is not None and is_lora_b(name):
            key, lr = f"{key} (LoRA+ B)", lr * method.lora.loraplus_lr_ratio
            lora_b += 1
        settings[key] = (lr, wd)
        buckets.setdefault((key, param.ndim >= 2), []).append(param)
    if not settings:
        raise ConfigError("method: nothing to train (every component is frozen)")
    if method.lora.loraplus_lr_ratio is not None and not lora_b:
        raise ConfigError("method.lora.loraplus_lr_ratio: no LoRA B matrix trains in this run (LoRA+ needs LoRA)")
    for rx, g in compiled:
        if g.pattern not in matched:
            raise ConfigError(f"method.param_groups: pattern '{g.pattern}' matches no trainable parameter")
    groups, summary = [], []
    for (key, decays), params in buckets.items():
        lr, wd = settings[key]
        groups.append({"params": params, "lr": lr, "weight_decay": wd if decays else 0.0, "name": key})
    for key, (lr, wd) in settings.items():
        n = sum(p.numel() for (k, _), ps in buckets.items() if k == key for p in ps)
        summary.append(GroupSummary(key, n, lr, wd))
    return groups, summary



def logged_param_groups(model: nn.Module, method: MethodConfig, train: TrainConfig,
                        components: list[Component]) -> list[dict]:
    """:func:`param_groups`, with the trainable-parameter table and every group logged (what a task prints)."""
    for line in trainable_table(model, components):
        log.info("params: %s", line)
    groups, summary = param_groups(model, method, train, components)
    for g in summary:
        log.info("optimizer group %s: %s params, lr %g, weight decay %g", g.name, f"{g.params:,}", g.lr,
                 g.weight_decay)
    return groups

def trainable_counts(model: nn.Module, components: list[Component]) -> list[dict]:
    """Per component (then ``other`` for parameters no component holds): how it trains, trainable / total
    parameters. The run's ``summary.json`` keeps these rows, so a report shows the table the log printed."""
    owner = _owner(model, components)
    rows: dict[str, list[int]] = {c.name: [0, 0] for c in components}
    how = {c.name: c.trainable for c in components}
    for param in model.parameters():
        comp = owner[id(param)].name if id(param) in owner else "other"
        entry = rows.setdefault(comp, [0, 0])
        entry[1] += param.numel()
        entry[0] += param.numel() if param.requires_grad else 0
    return [{"component": comp, "method": how.get(comp, ""), "trainable": t, "total": n}
            for comp, (t, n) in rows.items()]


def trainable_table(model: nn.Module, components: list[Component]) -> list[str]:
    """One line per component: how it trains, trainable / total parameters."""
    rows = trainable_counts(model, components)
    total_t = sum(r["trainable"] for r in rows)
    total = sum(r["total"] for r in rows)
    lines = [f"{'component':<24}{'method':>10}{'trainable':>14}{'total':>14}"]
    for r in rows:
        lines.append(f"{r['component']:<24}{r['method']:>10}{r['trainable']:>14,}{r['total']:>14,}")
    lines.append(f"{'all':<24}{'':>10}{total_t:>14,}{total:>14,}  ({100 * total_t / max(total, 1):.2f}% trainable)")
    return lines


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute decoder-layer activations in backward (non-reentrant: works with frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
