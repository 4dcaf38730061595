"""Load any Hugging Face causal LM and its tokenizer from a recipe's ``model`` section.

Safetensors (or GGUF, converted once to safetensors) only, never pickled
weights; ``trust_remote_code`` only when the recipe sets it. dtype and
attention kernel are chosen here, once.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

from mmtune.config.schema import ModelConfig
from mmtune.errors import ModelError
from mmtune.models.aliases import ALIASES, converted_gguf, resolve_alias

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_source(cfg: ModelConfig) -> str:
    """The hub name or local directory to pass to ``from_pretrained``.

    GGUF checkpoints (an alias, a ``.gguf`` path, or ``gguf_file``) resolve to
    their converted safetensors copy: the GGUF loader marks models as quantized,
    which training code refuses, so mmtune never trains from GGUF directly.
    """
    if cfg.name in ALIASES:
        return str(resolve_alias(cfg.name))
    path = Path(cfg.name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return str(converted_gguf(str(path.parent), path.name))
    if cfg.gguf_file is not None:
        return str(converted_gguf(cfg.name, cfg.gguf_file, revision=cfg.revision))
    if path.is_dir():
        _refuse_pickle_only(path)
        return str(path)
    if cfg.name.startswith((".", "/", "~")):
        raise ModelError(f"model.name: '{cfg.name}' is not an existing directory or .gguf file")
    return cfg.name


def _refuse_pickle_only(path: Path) -> None:
    has_safe = any(path.glob("*.safetensors"))
    has_pickle = any(path.glob("*.bin")) or any(path.glob("*.pt"))
    if has_pickle and not has_safe:
        raise ModelError(
            f"{path}: only pickled weights (*.bin / *.pt) found; mmtune loads safetensors only. "
            "Convert them once with a trusted script (load, then save_pretrained(safe_serialization=True))."
        )


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    return _DTYPES[name]


def resolve_attn(name: str, device_type: str) -> str:
    if name != "auto":
        if name == "flash_attention_2" and (device_type != "cuda" or not _has("flash_attn")):
            raise ModelError("model.attn_implementation: flash_attention_2 needs a CUDA GPU and the flash-attn package")
        return name
    return "flash_attention_2" if device_type == "cuda" and _has("flash_attn") else "sdpa"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    source = resolve_source(cfg)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code, "revision": cfg.revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the tokenizer of '{cfg.name}': {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def causal_lm_kwargs(cfg: ModelConfig, *, device_type: str = "cpu", quantization_config: Any = None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for the recipe's dtype, attention kernel and quantization."""
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(cfg.dtype, device_type),
        "attn_implementation": resolve_attn(cfg.attn_implementation, device_type),
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.revision,
        "use_safetensors": True,
    }
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return kwargs


def load_causal_lm(
    cfg: ModelConfig, *, device_type: str = "cpu", quantization_config: Any = None
) -> torch.nn.Module:
    """Load the decoder of a plain causal LM checkpoint (``quantization_config`` is passed through for QLoRA).

    Causal LMs inside checkpoints of other formats (a Llava directory) are read
    by ``mmtune.interop``; ``mmtune.models.open`` picks the right reader.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_source(cfg)
    try:
        return AutoModelForCausalLM.from_pretrained(source, **causal_lm_kwargs(
            cfg, device_type=device_type, quantization_config=quantization_config))
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load model '{cfg.name}' (tried {source}): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
