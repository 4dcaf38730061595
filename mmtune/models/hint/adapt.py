"""``mmtune hint adapt``: one instruction -> a standard peft LoRA adapter, usable without mmtune.

The hypernetwork of a hint run generates the instruction's adapters once. Every adapted module then adds
``scaling * B A x``; when the LLM trained with LoRA too, that module already adds its own ``s B' A' x``.
Both are one LoRA of the summed rank: ``A = [A'; A]``, ``B = [s B', scaling B]`` with a scaling of 1 (peft's
``rank_pattern`` / ``alpha_pattern`` give each module its rank). The adapter's base is the run's base model
(its directory when it was an alias), or ``final/`` itself when the LLM was fully tuned, so
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter_dir)`` reproduces the
hypernetwork's outputs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmtune.config.schema import ModelConfig
from mmtune.data.sni import SniTask, instruction_text
from mmtune.errors import ConfigError, ModelError
from mmtune.models.families.causal_lm import load_llm
from mmtune.models.hint.generator import GeneratedAdapters
from mmtune.models.hint.hypernetwork import (
    HINT_DIR,
    HINT_META,
    Hypernetwork,
    instruction_token_ids,
    instruction_tokenizer,
    is_hint_model,
    load_hypernetwork,
    peft_free_name,
    transformers_model,
)
from mmtune.models.hint.prefix import GeneratedPrefix
from mmtune.models.loading import load_tokenizer, resolve_source
from mmtune.models.open import MMTUNE_META, open_language_model
from mmtune.models.virtual_tokens import VirtualTokenLM

log = logging.getLogger("mmtune")


@dataclass
class HintRun:
    """A hint run's ``final/`` opened: its LLM (with its own trained adapter, if any), hypernetwork, tokenizers."""

    path: Path
    base: ModelConfig
    llm: nn.Module
    hypernetwork: Hypernetwork
    tokenizer: object
    instruction_tokenizer: object


def hint_model_dir(run: str | Path) -> Path:
    """A hint run's ``final/`` (or the directory itself); one line when it is not one."""
    from mmtune.models.run_outputs import model_dir_of

    path = model_dir_of(Path(run).expanduser())
    if not is_hint_model(path):
        raise ModelError(f"{path}: not a hint run's model (no hint/hint.json); train one with task: hint")
    return path


def check_writable(run: str | Path) -> None:
    """Refuse, before anything loads, a run whose generated modules no peft adapter holds."""
    path = hint_model_dir(run)
    kind = json.loads((path / HINT_DIR / HINT_META).read_text())["hint"]["adapter"]
    if kind == "bottleneck":
        raise ConfigError(f"hint adapt: {path} generates bottleneck adapters, which no peft method holds; only "
                          "hint.adapter: lora (and a prefix) is written as a peft adapter")


def open_hint_run(run: str | Path) -> HintRun:
    from mmtune.models.run_outputs import read_meta

    path = hint_model_dir(run).resolve()  # the adapter names its base by an absolute path
    meta = read_meta(path)
    base = ModelConfig(**meta["base_model"])
    llm = load_llm(path, base, device_type="cpu", merge=False).eval()
    net = load_hypernetwork(path, llm)
    tokenizer = load_tokenizer(ModelConfig(name=str(path)))
    return HintRun(path, base, llm, net, tokenizer, instruction_tokenizer(net.cfg, tokenizer))


def read_examples(file: Path) -> tuple[tuple[str, str], ...]:
    """Positive examples from a JSON / JSONL list of ``{"input", "output"}``, or an sni task file's own."""
    try:
        text = file.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if file.suffix == ".jsonl" \
            else json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"--examples: {file} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--examples: {file} is not valid JSON / JSONL ({exc})") from None
    if isinstance(rows, dict):
        rows = rows.get("Positive Examples", rows)
    out = []
    for i, row in enumerate(rows if isinstance(rows, list) else [], start=1):
        output = row.get("output") if isinstance(row, dict) else None
        output = output[0] if isinstance(output, list) and output else output
        if not isinstance(row, dict) or not isinstance(row.get("input"), str) or not isinstance(output, str):
            raise ConfigError(f"--examples: {file}: example {i} needs string 'input' and 'output'")
        out.append((row["input"], output))
    if not out:
        raise ConfigError(f"--examples: {file} holds no example (a list of {{input, output}}, or an sni task file)")
    return tuple(out)


def instruction_of(definition: str, examples: tuple[tuple[str, str], ...] = ()) -> str:
    """The instruction text as training read it (``Definition: ...`` and its positive examples)."""
    return instruction_text(SniTask("adapt", Path("."), definition.strip(), examples, ()), len(examples))


@torch.no_grad()
def generate_adapters(run: HintRun, instruction: str) -> GeneratedAdapters:
    ids, cut = instruction_token_ids(run.instruction_tokenizer, instruction, run.hypernetwork.cfg.max_instruction_length)
    if cut:
        log.warning("hint: the instruction is cut at hint.max_instruction_length=%d tokens, as training cut them",
                    run.hypernetwork.cfg.max_instruction_length)
    ids = torch.tensor([ids])
    return run.hypernetwork(ids, torch.ones_like(ids, dtype=torch.bool))


def lora_parts(run: HintRun, adapters: GeneratedAdapters) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module name, ``(A [r, in], B [out, r])`` of the one LoRA (scaling 1) equal to all it adds."""
    from peft.tuners.lora import LoraLayer

    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for raw, module in transformers_model(run.llm).named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            if module.use_dora.get("default"):
                raise ModelError(f"{run.path}: the LLM's DoRA adapter cannot be written as one LoRA with the "
                                 "generated adapters")
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            parts.setdefault(peft_free_name(raw), []).append((A, B * module.scaling["default"]))
    scaling = run.hypernetwork.slots.scaling
    for j, target in enumerate(run.hypernetwork.targets):
        parts.setdefault(target.name, []).append((adapters.A[j][0], adapters.B[j][0] * scaling))
    return {name: (torch.cat([a for a, _ in ab]), torch.cat([b for _, b in ab], dim=1)) for name, ab in parts.items()}


@contextmanager
def with_adapters(run: HintRun, adapters: GeneratedAdapters) -> Iterator[nn.Module]:
    """The run's LLM with one instruction's generated adapters in place, ready for mmtune's decoding loop (a
    generated prefix goes in front through :class:`VirtualTokenLM`, as a peft prefix would)."""
    with run.hypernetwork.slots.inserted(adapters):
        yield run.llm if adapters.prefix is None else VirtualTokenLM(GeneratedPrefix(run.llm, adapters.prefix))


@contextmanager
def instructed(run: HintRun, instruction: str) -> Iterator[nn.Module]:
    """:func:`with_adapters` for the adapters ``instruction`` generates."""
    with with_adapters(run, generate_adapters(run, instruction)) as model:
        yield model


def _lora_model(base_dir: Path, parts: dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """``base_dir``'s model with one peft LoRA holding ``parts`` (per module, its rank; scaling 1)."""
    from peft import LoraConfig, get_peft_model

    base = open_language_model(ModelConfig(name=str(base_dir), dtype="float32"), device_type="cpu")
    ranks = {name: int(a.shape[0]) for name, (a, _) in parts.items()}
    r = max(ranks.values())
    other = {re.escape(name): rank for name, rank in ranks.items() if rank != r}  # peft matches these as regexes
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(parts), rank_pattern=other,
                        alpha_pattern=other, task_type="CAUSAL_LM", base_model_name_or_path=str(base_dir))
    model = get_peft_model(base, config)
    for raw, module in model.base_model.model.named_modules():
        if raw in parts:
            A, B = parts[raw]
            module.lora_A["default"].weight.data.copy_(A)
            module.lora_B["default"].weight.data.copy_(B)
    return model


def write_adapter(run: HintRun, instruction: str, out: Path) -> Path:
    """The instruction's peft adapter (and the tokenizer) in ``out``; returns the base model it belongs to.

    LoRA only: a LoRA adapter on the run's base. With a generated prefix: a prefix-tuning adapter, on the base
    with every LoRA merged (``out/base``, since no peft adapter holds a prefix and LoRA together) when there is
    any LoRA, else on the run's base.
    """
    from peft import PrefixTuningConfig, get_peft_model

    check_writable(run.path)
    adapters = generate_adapters(run, instruction)
    parts = lora_parts(run, adapters)
    run_base = run.path if (run.path / "config.json").is_file() else Path(resolve_source(run.base))
    run_base = run_base.resolve() if run_base.exists() else run_base  # a local base by its absolute path
    base_dir, out = run_base, out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if adapters.prefix is None:
        model = _lora_model(base_dir, parts)
    else:
        if parts:
            base_dir = out / "base"
            _lora_model(run_base, parts).merge_and_unload().save_pretrained(str(base_dir), safe_serialization=True)
            run.tokenizer.save_pretrained(str(base_dir))
        prefix = GeneratedPrefix(run.llm, adapters.prefix)
        base = open_language_model(ModelConfig(name=str(base_dir), dtype="float32"), device_type="cpu")
        model = get_peft_model(base, PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=prefix.active_peft_config.num_virtual_tokens,
            base_model_name_or_path=str(base_dir)))
        model.prompt_encoder["default"].embedding.weight.data.copy_(prefix.peft_weight())
    model.save_pretrained(str(out), safe_serialization=True)
    run.tokenizer.save_pretrained(str(out))
    (out / "hint_instruction.txt").write_text(instruction + "\n")
    # So that mmtune opens it too (chat, generate, eval, serve): an adapter on that base, as an SFT run leaves one.
    meta = {"family": "causal_lm", "base_model": ModelConfig(name=str(base_dir)).model_dump(mode="json", exclude={"media"}),
            "method": "lora" if adapters.prefix is None else "peft"}
    (out / MMTUNE_META).write_text(json.dumps(meta, indent=2))
    return base_dir
