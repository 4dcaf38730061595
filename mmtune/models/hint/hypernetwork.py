"""HINT's hypernetwork: instruction encoder -> parameter generator -> adapters hooked into the LLM.

    instruction ids --encoder--> hidden states [K, T, D] --generator--> A, B per adapted module
                                                                 --AdapterSlots--> the LLM's forward

The encoder is the LLM's own pass by default (the paper reuses its model's encoder; a decoder-only LLM's
last hidden states play that role), run without gradients and with no generated adapter in place, or any
transformers encoder model with its own tokenizer. Only the generator (and a named encoder, if it trains)
belongs to this module's parameters; the LLM stays the objective's.

``final/hint/`` holds ``hint.json`` (the ``hint`` section, the adapted modules and their shapes) and
``hypernetwork.safetensors`` (the generator, and a trained encoder's merged weights).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmtune.config.schema import HintConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.models.hint.generator import AdapterTarget, GeneratedAdapters, ParameterGenerator, PrefixShape
from mmtune.models.hint.insertion import AdapterSlots
from mmtune.models.multimodal.build import merged_state_dict
from mmtune.models.virtual_tokens import cache_kwarg

log = logging.getLogger("mmtune")

HINT_DIR = "hint"
HINT_META = "hint.json"
HINT_WEIGHTS = "hypernetwork.safetensors"


def transformers_model(llm: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


def peft_free_name(name: str) -> str:
    """A module path as the transformers model names it, without peft's wrapper prefix."""
    return name.removeprefix("base_model.model.")


def prefix_shape(llm: nn.Module, tokens: int) -> PrefixShape:
    """Every attention layer's key/value prefix, shaped as its KV cache is (grouped-query heads counted as peft's
    prefix tuning counts them)."""
    config = transformers_model(llm).config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return PrefixShape(config.num_hidden_layers, tokens, heads, head_dim)


def adapter_targets(llm: nn.Module, kinds: list[str]) -> tuple[list[AdapterTarget], dict[str, nn.Module]]:
    """The LLM's modules named one of ``kinds`` in numbered layers, and the modules by name.

    A module's layer is the first number in its path (``model.layers.3.self_attn.q_proj`` -> 3), as peft's
    ``layers_to_transform`` reads it. peft's LoRA layers count as the module they wrap.
    """
    from peft.tuners.lora import LoraLayer

    targets, modules = [], {}
    for raw_name, module in transformers_model(llm).named_modules():
        name = peft_free_name(raw_name)
        kind = name.rsplit(".", 1)[-1]
        if kind not in kinds:
            continue
        base = module.get_base_layer() if isinstance(module, LoraLayer) else module
        if not isinstance(base, nn.Linear):
            continue
        layer = next((int(part) for part in name.split(".") if part.isdigit()), None)
        if layer is None:
            continue
        targets.append(AdapterTarget(name, layer, kind, base.in_features, base.out_features))
        modules[name] = module
    missing = sorted(set(kinds) - {t.kind for t in targets})
    if missing:
        raise ConfigError(f"hint.target_modules: no Linear layer named {missing} in the LLM's layers")
    return targets, modules


class OwnPass:
    """The LLM's own forward as the instruction encoder: last hidden states, no gradients.

    Not an ``nn.Module`` on purpose: the LLM's weights are the objective's, not the hypernetwork's.
    """

    def __init__(self, llm: nn.Module) -> None:
        self.llm = llm
        self.hidden_size = transformers_model(llm).config.hidden_size

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        decoder = transformers_model(self.llm).get_decoder()
        return decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def instruction_tokenizer(cfg: HintConfig, llm_tokenizer):
    """What tokenizes instructions: the LLM's own (its own pass reads them), or the named encoder's."""
    if cfg.encoder.name is None:
        return llm_tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(cfg.encoder.name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"hint.encoder.name: no tokenizer for '{cfg.encoder.name}' ({exc})") from None


def instruction_token_ids(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    """An instruction's ids as the encoder reads them (special tokens added, cut at ``max_length``), and whether it
    was cut: training and ``mmtune hint adapt`` tokenize alike through here."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return ids[:max_length], len(ids) > max_length


def open_instruction_encoder(name: str) -> nn.Module:
    """A transformers encoder by name: a plain encoder (BERT), or the encoder stack of an encoder-decoder (T5)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(name)
        model = AutoModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"hint.encoder.name: cannot open '{name}' as a transformers model ({exc})") from None
    return model.get_encoder() if config.is_encoder_decoder else model


class Hypernetwork(nn.Module):
    """Instructions -> generated adapters, and the hooks that put them in the LLM."""

    def __init__(self, llm: nn.Module, cfg: HintConfig, *, encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.targets, modules = adapter_targets(llm, cfg.target_modules) if cfg.adapter != "none" else ([], {})
        self.encoder = encoder
        """A named transformers encoder (trained or not); None: the LLM's own pass."""
        self.own_pass = OwnPass(llm) if encoder is None else None
        width = self.own_pass.hidden_size if encoder is None else encoder.config.hidden_size
        prefix = prefix_shape(llm, cfg.prefix_tokens) if cfg.prefix_tokens else None
        self.generator = ParameterGenerator(self.targets, instruction_dim=width, hidden_size=cfg.hidden_size,
                                            blocks=cfg.blocks, heads=cfg.heads, rank=cfg.rank, prefix=prefix)
        self.slots = AdapterSlots(modules, self.targets, scaling=cfg.alpha / cfg.rank,
                                  kind="bottleneck" if cfg.adapter == "bottleneck" else "lora")
        self._cache_key = cache_kwarg(transformers_model(llm))
        self._llm_dtype = lambda: transformers_model(llm).dtype  # read at call time: mixed precision may recast

    def place_prefix(self, inputs: dict) -> dict:
        """The LLM's decoder arguments with the prefixes of the adapters last set (``slots.set``, which
        ``HintObjective`` calls for its batch just before) in front."""
        return self.slots.with_prefix(self._cache_key, inputs, self._llm_dtype())

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            with self.slots.suspended():  # the plain LLM reads the instruction
                return self.own_pass(ids, mask)
        return self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> GeneratedAdapters:
        """Adapters for ``K`` instructions: ``ids`` / ``mask`` [K, T] (right-padded)."""
        return self.generator(self.encode(ids, mask).to(self.generator.layer_embed.weight.dtype), mask)

    def save(self, target: Path, *, encoder_trained: bool) -> None:
        """``target/hint/``: the section, the adapted modules and the weights."""
        out = target / HINT_DIR
        out.mkdir(parents=True, exist_ok=True)
        state = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        if self.encoder is not None and encoder_trained:
            state.update({f"encoder.{k}": v for k, v in merged_state_dict(self.encoder).items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / HINT_WEIGHTS))
        shape = self.generator.prefix_shape
        meta = {"hint": self.cfg.model_dump(mode="json"), "targets": [t.to_json() for t in self.targets],
                "prefix": shape.to_json() if shape else None,
                "encoder_saved": self.encoder is not None and encoder_trained}
        (out / HINT_META).write_text(json.dumps(meta, indent=2))


def is_hint_model(path: Path) -> bool:
    return (path / HINT_DIR / HINT_META).is_file()


def load_hypernetwork(path: Path, llm: nn.Module) -> Hypernetwork:
    """The hypernetwork saved in ``path/hint/`` on ``llm`` (the run's LLM, as ``final/`` loads it)."""
    meta = json.loads((path / HINT_DIR / HINT_META).read_text())
    cfg = HintConfig(**meta["hint"])
    encoder = open_instruction_encoder(cfg.encoder.name) if cfg.encoder.name else None
    net = Hypernetwork(llm, cfg, encoder=encoder)
    saved = [AdapterTarget(**t) for t in meta["targets"]]
    shape = net.generator.prefix_shape
    if saved != net.targets or meta["prefix"] != (shape.to_json() if shape else None):
        raise ModelError(f"{path}: the LLM's adapted modules differ from those the hypernetwork was trained for")
    state = load_file(str(path / HINT_DIR / HINT_WEIGHTS))
    net.generator.load_state_dict({k.removeprefix("generator."): v for k, v in state.items()
                                   if k.startswith("generator.")})
    if meta["encoder_saved"]:
        net.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    return net.eval()
