"""Save a trained model as standard Hugging Face files, and load any model mmtune can chat with.

``final/`` of a run is a plain transformers model directory (full / freeze) or
a peft adapter directory (lora / qlora), plus the tokenizer with the exact
chat template used in training, plus ``mmtune.json`` naming the base model.
A multimodal model adds ``vision.safetensors`` and its vision spec (see
``mmtune.vision.build``); its LLM files are absent when the LLM was frozen.
``load_for_inference`` accepts a run directory, a ``final/`` or checkpoint-free
adapter directory, an exported directory, a hub name or an offline alias.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from mmtune.config.schema import ModelConfig
from mmtune.errors import ModelError
from mmtune.models.loading import load_causal_lm, load_tokenizer
from mmtune.utils.atomic import atomic_directory

MMTUNE_META = "mmtune.json"


def save_final(target: Path, model: nn.Module, tokenizer, *, base: ModelConfig, method: str,
               encoder_trained: bool = False) -> None:
    """Write ``target`` atomically (temporary directory, then rename)."""
    from mmtune.vision.model import MultimodalLM

    with atomic_directory(target) as tmp:
        meta = {"base_model": base.model_dump(mode="json", exclude={"vision"}), "method": method}
        llm = model
        if isinstance(model, MultimodalLM):
            from mmtune.vision.build import save_vision

            llm = model.llm if method != "frozen" else None
            meta["vision"] = base.vision.model_dump(mode="json")
            meta["encoder_saved"] = save_vision(tmp, model, base.vision, encoder_trained)
        if llm is not None:
            llm.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MMTUNE_META).write_text(json.dumps(meta, indent=2))


def model_dir_of(path: Path) -> Path:
    """A run directory means its ``final/``."""
    if (path / "final" / MMTUNE_META).is_file():
        return path / "final"
    if (path / "config.yaml").is_file() and not (path / "final").exists():
        raise ModelError(f"{path}: run has no final/ model yet (did training finish?)")
    return path


def load_for_inference(name: str, *, device_type: str = "cpu", dtype: str = "auto", merge: bool = False):
    """(model, tokenizer) ready for generation; peft adapters are applied (and merged if asked)."""
    path = Path(name).expanduser()
    if path.exists():
        path = model_dir_of(path)
        name = str(path)
    meta_file = path / MMTUNE_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if "vision" in meta:
        return _load_multimodal(path, meta, device_type=device_type, dtype=dtype, merge=merge)
    from mmtune.vision.import_llava import llava_config, load_llava

    if llava_config(path) is not None:  # a transformers Llava checkpoint (e.g. from export --format hf-llava)
        return load_llava(path, device_type=device_type, dtype=dtype)
    if (path / "adapter_config.json").is_file():
        if not meta_file.is_file():
            raise ModelError(f"{path}: adapter without {MMTUNE_META}; cannot tell which base model it belongs to")
        base = ModelConfig(**json.loads(meta_file.read_text())["base_model"])
        base.dtype = dtype if dtype != "auto" else base.dtype
        from peft import PeftModel

        model = PeftModel.from_pretrained(load_causal_lm(base, device_type=device_type), str(path))
        if merge:
            model = model.merge_and_unload()
        tokenizer = load_tokenizer(ModelConfig(name=str(path)))
        return model.eval(), tokenizer
    cfg = ModelConfig(name=name, dtype=dtype)  # a plain model directory, hub name or alias
    return load_causal_lm(cfg, device_type=device_type).eval(), load_tokenizer(cfg)


def _load_multimodal(path: Path, meta: dict, *, device_type: str, dtype: str, merge: bool):
    from mmtune.config.schema import VisionConfig
    from mmtune.vision.build import load_vision

    base = ModelConfig(**meta["base_model"])
    base.dtype = dtype if dtype != "auto" else base.dtype
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        llm = PeftModel.from_pretrained(load_causal_lm(base, device_type=device_type), str(path))
        llm = llm.merge_and_unload() if merge else llm
    elif (path / "config.json").is_file():
        llm = load_causal_lm(ModelConfig(name=str(path), dtype=base.dtype), device_type=device_type)
    else:  # the LLM was frozen: it is the base model
        llm = load_causal_lm(base, device_type=device_type)
    model = load_vision(path, VisionConfig(**meta["vision"]), llm, encoder_saved=meta["encoder_saved"])
    return model.eval(), load_tokenizer(ModelConfig(name=str(path)))


@torch.no_grad()
def export_hf(run_or_model: str, out_dir: Path) -> Path:
    """Merge any adapter and write a standard transformers model directory to ``out_dir``."""
    model, tokenizer = load_for_inference(run_or_model, merge=True)
    if not isinstance(model, PreTrainedModel):
        raise ModelError(f"export: {run_or_model} is a multimodal model; export it with --format hf-llava")
    if hasattr(model, "peft_config"):
        raise ModelError("export: adapter could not be merged")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model.config.name_or_path = out_dir.name
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir
