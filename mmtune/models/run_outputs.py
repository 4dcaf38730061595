"""What a run leaves in ``final/``, and opening any model mmtune can chat with.

``final/`` holds the trained model in its family's layout
(``mmtune.models.families``), the tokenizer with the exact chat template used
in training, and ``mmtune.json``: the family, the base model and the method.
:func:`load_for_inference` opens a run directory, its ``final/``, a
checkpoint of a supported interop format (a Llava directory), a plain model
directory, a hub name or an offline alias.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from mmtune.config.schema import MethodConfig, ModelConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.interop import reader_for
from mmtune.models.edit_models import is_editing_model, open_edit_pipeline
from mmtune.models.families import FAMILIES, causal_lm, multimodal_lm
from mmtune.models.loading import load_tokenizer
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.models.open import MMTUNE_META, open_language_model
from mmtune.models.virtual_tokens import VirtualTokenLM
from mmtune.utils.atomic import atomic_directory


def save_final(target: Path, model: nn.Module, tokenizer, *, base: ModelConfig, method: MethodConfig,
               initial_adapter: Path | None = None, merge_adapter: bool = False,
               extra_files: Callable[[Path], dict] | None = None) -> None:
    """Write ``target`` atomically (temporary directory, then rename) in the model's family layout.

    ``initial_adapter``: LoRA as initialised from the base weights (PiSSA / OLoRA), to convert the adapter against.
    ``merge_adapter``: the LLM's adapter written merged into full weights (LoftQ).
    ``extra_files``: a task's own files beside the LLM's (the hint task's hypernetwork), written into the same
    temporary directory; what it returns updates ``mmtune.json`` (its ``family`` among others).
    """
    with atomic_directory(target) as tmp:
        if isinstance(model, MultimodalLM):
            trained = {name for name, m in method.media.model_dump().items() if m and m["encoder"]["trainable"] != "frozen"}
            family = multimodal_lm.NAME
            extra = multimodal_lm.save(tmp, model, base=base, llm_trained=method.name != "frozen",
                                       trained_encoders=trained, initial_adapter=initial_adapter,
                                       merge_adapter=merge_adapter)
        else:
            family, extra = causal_lm.NAME, causal_lm.save(tmp, model, trained=method.name != "frozen",
                                                           initial_adapter=initial_adapter, merge_adapter=merge_adapter)
        tokenizer.save_pretrained(tmp)
        meta = {"family": family, "base_model": base.model_dump(mode="json", exclude={"media"}),
                "method": method.name, **extra}
        if extra_files is not None:
            meta.update(extra_files(tmp))
        (tmp / MMTUNE_META).write_text(json.dumps(meta, indent=2))


def read_meta(path: Path) -> dict:
    """``mmtune.json`` of a model directory (``{}`` if none); runs saved before families existed are read too."""
    file = path / MMTUNE_META
    if not file.is_file():
        return {}
    meta = json.loads(file.read_text())
    if "vision" in meta:  # the single image branch of earlier runs
        meta["media"] = {"image": meta.pop("vision")}
        meta["encoders_saved"] = ["image"] if meta.pop("encoder_saved", False) else []
    meta.setdefault("family", multimodal_lm.NAME if "media" in meta else causal_lm.NAME)
    return meta


def model_dir_of(path: Path) -> Path:
    """A run directory means its ``final/``."""
    if (path / "final" / MMTUNE_META).is_file():
        return path / "final"
    if (path / "config.yaml").is_file() and not (path / "final").exists():
        raise ModelError(f"{path}: run has no final/ model yet (did training finish?)")
    return path


def load_for_export(name: str, *, fmt: str | None = None, keep_lora: bool = False):
    """What ``mmtune export`` writes: ``(model, tokenizer)`` of a chat model with its adapters merged, or
    ``(pipeline, tokenizer)`` of an image-editing model, its LoRA fused unless ``keep_lora``. A format that
    cannot hold the model is refused before it loads."""
    from mmtune.interop.diffusers_ip2p import check_fits

    path = Path(name).expanduser()
    editing = path.exists() and is_editing_model(model_dir_of(path))
    if fmt is not None:
        check_fits(editing, fmt)
    if editing:
        pipe = open_edit_pipeline(model_dir_of(path), fuse_lora=not keep_lora)
        return pipe, pipe.tokenizer
    if keep_lora:
        raise ConfigError("export --keep-lora: only an image-editing run (task: edit) keeps its LoRA, as diffusers "
                          "LoRA weights; the adapters of other runs are merged")
    model, tokenizer = load_for_inference(name, merge=True)
    if isinstance(model, MultimodalLM) and isinstance(model.llm, VirtualTokenLM):
        raise ModelError(f"export: the LLM's {model.llm.method} adds virtual tokens, which no multimodal Hugging Face "
                         "checkpoint holds; the run stays in mmtune's format (final/ reloads with mmtune chat)")
    return model, tokenizer


def load_for_inference(name: str, *, device_type: str = "cpu", dtype: str = "auto", merge: bool = False):
    """(model, tokenizer) ready for generation; peft adapters are applied (and merged if asked)."""
    path = Path(name).expanduser()
    if path.exists():
        path = model_dir_of(path)
        name = str(path)
        if is_editing_model(path):
            raise ModelError(f"{path}: an image-editing model (InstructPix2Pix), not a chat model; use "
                             f"mmtune edit --model {path} --image IMAGE INSTRUCTION")
    meta = read_meta(path)
    if meta:
        base = ModelConfig(**meta["base_model"])
        base.dtype = dtype if dtype != "auto" else base.dtype
        if meta["family"] not in FAMILIES:
            raise ModelError(f"{path}: unknown model family '{meta['family']}' in {MMTUNE_META}")
        model = FAMILIES[meta["family"]].load(path, meta, base, device_type=device_type, merge=merge)
        return model.eval(), load_tokenizer(ModelConfig(name=str(path)))
    reader = reader_for(path) if path.exists() else None
    if reader is not None:  # a checkpoint of another format (e.g. from export --format hf-llava)
        return reader.load(path, device_type=device_type, dtype=dtype)
    if (path / "adapter_config.json").is_file():
        raise ModelError(f"{path}: adapter without {MMTUNE_META}; cannot tell which base model it belongs to")
    cfg = ModelConfig(name=name, dtype=dtype)  # a plain model directory, hub name or alias
    return open_language_model(cfg, device_type=device_type).eval(), load_tokenizer(cfg)
