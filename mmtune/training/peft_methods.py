"""``method.name: peft`` and ``trainable: peft``: any peft method, and what some of them need beyond ``get_peft_model``.

The recipe names a peft config class and its options (checked when the recipe
is validated, ``mmtune.config.peft_options``); here the config is built with
``task_type`` filled in and put on the LLM (``get_peft_model``) or on one
component of a multimodal model (``inject_adapter_in_model``). What a few
methods need from the rest of a run lives here too, so the loop stays
method-agnostic:

- AdaLoRA reallocates ranks from the gradients' importance after every
  optimizer step (``update_and_allocate``), so its schedule needs the run's
  step count: :func:`step_hook` returns the callable the loop calls after
  ``optimizer.step()`` and before ``zero_grad``.
- AdaLoRA also keeps each adapter's P and Q orthogonal with a loss term
  (``orth_reg_weight``) that peft adds only when its own forward computes the
  loss; mmtune computes the loss itself, so :func:`loss_penalty` hands the
  objective that term.
- PiSSA / OLoRA initialise LoRA from the base weights and subtract that part
  from them; :func:`keep_initial_adapter` keeps the starting adapter so
  ``final/`` can hold the adapter converted back onto the original base.
- Virtual-token methods (prompt tuning, P-tuning, prefix tuning) are placed
  by ``mmtune.models.virtual_tokens``; :func:`check_virtual_tokens` refuses
  what they cannot do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtune.config.peft_options import peft_config_classes
from mmtune.config.schema import MethodConfig
from mmtune.errors import ConfigError
from mmtune.models.virtual_tokens import PLACED, prompt_learning_type


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_peft_config(section: dict[str, Any], *, task_type: str | None, key: str,
                      defaults: dict[str, Any] | None = None):
    """The peft config a ``peft`` section names (``key`` is its place in the recipe, for errors); ``defaults``:
    options filled in where the section gives none."""
    name = section["type"]
    cls = peft_config_classes()[name]
    options = {**(defaults or {}), **{k: v for k, v in section.items() if k != "type"}}
    if name == "AdaLoraConfig":
        # Replaced by the run's step count before the first allocation (step_hook); AdaLoraConfig needs a valid one now.
        options["total_step"] = options.get("tinit", 0) + options.get("tfinal", 0) + 1
    if task_type is not None:
        options["task_type"] = task_type
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {name}: {_first_line(exc)}") from None


def apply_peft_method(model: nn.Module, section: dict[str, Any]) -> nn.Module:
    """``method.name: peft``: the LLM wrapped by peft with the method ``section`` names."""
    from peft import get_peft_model

    # Prompt tuning from a text's token embeddings reads the tokenizer: the model's own directory (a resolved alias).
    text_init = {"tokenizer_name_or_path": model.name_or_path} if section.get("prompt_tuning_init") == "TEXT" else {}
    config = build_peft_config(section, task_type="CAUSAL_LM", key="method.peft", defaults=text_init)
    if config.is_prompt_learning and config.peft_type.value not in PLACED:
        raise ConfigError(f"method.peft: {section['type']} is not supported (it needs task ids or its own forward); "
                          "virtual-token methods supported: PromptTuningConfig, PromptEncoderConfig, "
                          "PrefixTuningConfig")
    try:
        return get_peft_model(model, config)
    except (TypeError, ValueError, KeyError, NotImplementedError, OSError) as exc:
        raise ConfigError(f"method.peft: {section['type']}: {_first_line(exc)}") from None


def inject_component_peft(module: nn.Module, section: dict[str, Any], name: str) -> None:
    """``trainable: peft`` on one component: the method's layers injected in place (no wrapper), the rest frozen.

    ``target_modules`` defaults to every Linear layer of the component.
    """
    from peft import inject_adapter_in_model

    key = f"method.media.{name}.peft"
    config = build_peft_config(section, task_type=None, key=key)
    if config.is_prompt_learning or config.peft_type.value == "ADALORA":
        raise ConfigError(f"{key}: {section['type']} works on the LLM only (method.name: peft); on a component use "
                          "a method that adapts its layers (LoRA, LoHa, LoKr, IA3, OFT, VeRA ...)")
    if hasattr(config, "target_modules") and config.target_modules is None:  # a method with targets, none given
        config.target_modules = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules()
                                        if isinstance(m, nn.Linear) and n})
        if not config.target_modules:
            raise ConfigError(f"{key}: this component has no Linear layer; name its target_modules")
    module.requires_grad_(False)
    try:
        inject_adapter_in_model(config, module)
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        raise ConfigError(f"{key}: {section['type']}: {_first_line(exc)}") from None


def check_virtual_tokens(model: nn.Module, *, block_mask: bool) -> None:
    """Refuse, in one line, what virtual tokens cannot do in this run (packing with a block mask is fine)."""
    method = prompt_learning_type(model)
    if method is None:
        return
    if not block_mask:
        raise ConfigError(f"method.peft: {method} needs the explicit attention mask (the virtual tokens join every "
                          "packed sample); set model.attn_implementation to sdpa or eager")


class AdaLoraAllocation:
    """AdaLoRA's per-step rank allocation, called by the loop while the step's gradients are still there.

    It is also checkpointed state (``TaskRun.extra_state``): a resumed run goes on from the same importance
    averages and allocated ranks.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model
        self.config = peft_model.active_peft_config

    def __call__(self, step: int, total_steps: int) -> None:
        """``step``: the optimizer step just taken, counted from 0; ``total_steps``: the run's step count."""
        if self.config.total_step != total_steps:
            if self.config.tinit >= total_steps - self.config.tfinal:
                raise ConfigError(f"method.peft: AdaLoRA's tinit ({self.config.tinit}) and tfinal "
                                  f"({self.config.tfinal}) leave no step of this run's {total_steps} to reallocate "
                                  "ranks in; lower them or train longer")
            self.config.total_step = total_steps
        self.peft_model.base_model.update_and_allocate(step)

    def state_dict(self) -> dict:
        """What resuming needs: the importance averages, the allocated ranks and the schedule's length."""
        allocator = self.peft_model.base_model.rankallocator
        return {"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt, "exp_avg_unc": allocator.exp_avg_unc,
                "rank_pattern": self.config.rank_pattern, "total_step": self.config.total_step}

    def load_state_dict(self, state: dict) -> None:
        allocator = self.peft_model.base_model.rankallocator
        allocator.ipt, allocator.exp_avg_ipt = state["ipt"], state["exp_avg_ipt"]
        allocator.exp_avg_unc = state["exp_avg_unc"]
        self.config.rank_pattern, self.config.total_step = state["rank_pattern"], state["total_step"]


class OrthogonalPenalty:
    """AdaLoRA's regulariser, as peft's ``AdaLoraModel.forward`` adds it: ``orth_reg_weight`` times the mean of
    ``||P Pᵀ - I||_F`` over the ``lora_A`` matrices and ``||Qᵀ Q - I||_F`` over the ``lora_B`` ones."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.weight = peft_model.active_peft_config.orth_reg_weight
        self.params = [(".lora_A." in n, p) for n, p in peft_model.named_parameters()
                       if p.requires_grad and (".lora_A." in n or ".lora_B." in n)]

    def __call__(self) -> torch.Tensor:
        terms = []
        for is_a, p in self.params:
            if p.numel() == 0:  # a layer whose every rank was pruned
                continue
            cov = p @ p.T if is_a else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)))
        return self.weight * torch.stack(terms).mean() if terms else torch.zeros(())


def loss_penalty(model: nn.Module):
    """A term the method adds to the loss of every training batch (None: none)."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.peft_type.value == "ADALORA" and config.orth_reg_weight > 0:
        return OrthogonalPenalty(model)
    return None


def step_hook(model: nn.Module):
    """What the loop calls after each optimizer step for this model's method (None: nothing)."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.peft_type.value == "ADALORA":
        return AdaLoraAllocation(model)
    return None


CONVERTED_INITS = ("pissa", "olora")
"""``method.lora.init`` values that move part of the base weights into the adapter."""


def keep_initial_adapter(model: nn.Module, method: MethodConfig, run_dir: Path, *, write: bool) -> Path | None:
    """Where the LLM's adapter as initialised is kept when ``final/`` must be converted against it (PiSSA / OLoRA),
    written there if ``write`` (the main process); None for every other method.

    Its config says ``init_lora_weights: true`` as peft asks: loaded again it must not re-run the SVD / QR.
    """
    if method.name not in ("lora", "qlora") or method.lora.init not in CONVERTED_INITS:
        return None
    directory = run_dir / "initial-adapter"
    model.active_peft_config.init_lora_weights = True
    if write:
        model.save_pretrained(str(directory), safe_serialization=True)
    return directory
