"""Methods (LoRA variants, freeze, parameter groups, QLoRA on CPU) and model loading rules."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtune.config.schema import MethodConfig, ModelConfig, TrainConfig
from mmtune.data.packing import Collator
from mmtune.errors import ConfigError, ModelError
from mmtune.models.loading import load_causal_lm, resolve_dtype, resolve_source
from mmtune.training.methods import (
    Component,
    apply_method,
    enable_activation_checkpointing,
    param_groups,
    qlora_quantization_config,
    trainable_table,
)
from mmtune.training.objective import CausalLMObjective


@pytest.fixture()
def tiny(tiny_llama_dir):
    return load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))


def test_lora_variants_reach_peft(tiny):
    dora = apply_method(tiny, MethodConfig(name="lora", lora={"rank": 4, "alpha": 8, "use_dora": True}))
    names = [n for n, p in dora.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in names)
    assert all("lora_" in n for n in names)  # only adapter weights train


def test_rslora_scales_by_sqrt_rank(tiny_llama_dir):
    model = apply_method(load_causal_lm(ModelConfig(name=str(tiny_llama_dir))),
                         MethodConfig(name="lora", lora={"rank": 4, "alpha": 8, "use_rslora": True,
                                                         "target_modules": ["q_proj"]}))
    layer = next(m for n, m in model.named_modules() if n.endswith("q_proj") and hasattr(m, "scaling"))
    assert layer.scaling["default"] == pytest.approx(8 / math.sqrt(4))


def test_param_groups_give_each_pattern_its_learning_rate(tiny):
    method = MethodConfig(name="full", param_groups=[{"pattern": r"embed_tokens", "lr": 1e-5},
                                                      {"pattern": r"layers\.0\.", "lr": 3e-4, "weight_decay": 0.1}])
    groups, summary = param_groups(CausalLMObjective(tiny), method, TrainConfig(lr=1e-3, weight_decay=0.01))
    by_name = {g.name: g for g in summary}
    assert by_name["embed_tokens"].lr == 1e-5 and by_name[r"layers\.0\."].lr == 3e-4
    assert by_name["default"].lr == 1e-3
    for group in groups:  # 1-D tensors (norms) never decay
        if all(p.ndim == 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0
    total = sum(p.numel() for g in groups for p in g["params"])
    assert total == sum(p.numel() for p in tiny.parameters())
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        param_groups(CausalLMObjective(tiny), MethodConfig(name="full", param_groups=[{"pattern": "nope"}]), TrainConfig())


def test_freeze_without_matches_is_an_error_and_table_counts(tiny):
    with pytest.raises(ConfigError, match="no parameter name matches"):
        apply_method(tiny, MethodConfig(name="freeze", trainable=["does_not_exist"]))
    apply_method(tiny, MethodConfig(name="freeze", trainable=[r"norm"]))
    table = "\n".join(trainable_table(tiny, [Component("llm", tiny, "freeze")]))
    trainable = sum(p.numel() for p in tiny.parameters() if p.requires_grad)
    assert f"{trainable:,}" in table.splitlines()[-1]


def test_qlora_on_cpu_says_what_it_needs():
    with pytest.raises(ConfigError, match="CUDA GPU"):
        qlora_quantization_config("cpu")


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir):
    rng = np.random.default_rng(0)
    samples = [(rng.integers(0, 1000, n).astype(np.int32), np.ones(n, bool)) for n in (20, 33)]
    batch = Collator(samples, pad_id=0)([[0, 1]])
    grads = []
    for checkpointing in (False, True):
        model = load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))
        if checkpointing:
            enable_activation_checkpointing(model)
            assert model.is_activation_checkpointing
        model.train()
        loss, n = CausalLMObjective(model)(batch)
        (loss / n).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_pickle_only_checkpoints_are_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="safetensors only"):
        resolve_source(ModelConfig(name=str(tmp_path)))


def test_gguf_paths_resolve_to_one_cached_conversion(tmp_path, monkeypatch):
    """A .gguf path (or directory + gguf_file) is converted once to safetensors; changing the file re-converts."""
    from mmtune.models import aliases

    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(source, filename, target, *, revision=None):
        calls.append((source, filename))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(aliases, "convert_gguf", fake_convert)
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"v1")
    first = resolve_source(ModelConfig(name=str(gguf)))
    assert resolve_source(ModelConfig(name=str(tmp_path), gguf_file="m.Q4.gguf")) == first
    assert calls == [(str(tmp_path), "m.Q4.gguf")] and Path(first).parent == tmp_path / "cache" / "models"
    gguf.write_bytes(b"version 2")
    assert resolve_source(ModelConfig(name=str(gguf))) != first and len(calls) == 2


def test_missing_local_model_and_alias_resolution():
    with pytest.raises(ModelError, match="not an existing directory"):
        resolve_source(ModelConfig(name="./missing-model"))
    src = resolve_source(ModelConfig(name="smollm2-135m-instruct"))
    assert (Path(src) / "model.safetensors").is_file()


def test_default_dtype_is_fp32_on_cpu_bf16_on_gpu():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16


def test_converted_alias_is_a_plain_trainable_model(smol_dir):
    import json

    config = json.loads((smol_dir / "config.json").read_text())
    assert "quantization_config" not in config  # peft and Trainer would refuse a "quantized" model
    assert config["model_type"] == "llama"


def test_hub_dataset_entry_reads_through_datasets(tmp_path, tokenizer):
    """``hub:`` goes through datasets.load_dataset; a local dataset folder exercises that path offline."""
    from conftest import write_jsonl

    from mmtune.config.schema import DataConfig, DatasetSpec
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.data.templates import install_template

    folder = tmp_path / "hubset"
    write_jsonl(folder / "train.jsonl", [{"instruction": f"Say {i}", "output": str(i)} for i in range(5)])
    install_template(tokenizer, "auto")
    data = build_conversation_data(tokenizer, DataConfig(datasets=[DatasetSpec(hub=str(folder), format="alpaca")],
                                                 cache_dir=str(tmp_path / "cache")), seed=0)
    assert len(data.train) == 5
    texts = sorted(tokenizer.decode(data.train[k][0]) for k in range(5))
    assert all(f"Say {i}" in texts[i] for i in range(5))
