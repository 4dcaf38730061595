"""LoftQ on CPU without training: the simulated quantizers, the initialisation's point (Q(W) + adapter is closer to the
original model than Q(W) alone), and what it refuses in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmtune.config.loader import validate_recipe
from mmtune.config.schema import ComponentMethod, LoraConfig, MethodConfig, ModelConfig
from mmtune.errors import ConfigError
from mmtune.models.loading import load_causal_lm
from mmtune.training.loftq import NF4_BLOCK, NF4_CODE, loftq_factors, quantized
from mmtune.training.methods import apply_component_method, apply_method

IDS = torch.tensor([[1, 57, 300, 2001, 45, 9, 812, 4000, 77, 5]])


@pytest.fixture()
def tiny(tiny_llama_dir, one_torch_thread):
    return load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))


def test_nf4_keeps_16_levels_per_block_scaled_by_its_absmax_and_int8_is_finer():
    torch.manual_seed(0)
    w = torch.randn(8, 2 * NF4_BLOCK)
    q = quantized(w, 4)
    for block, qblock in zip(w.reshape(-1, NF4_BLOCK), q.reshape(-1, NF4_BLOCK)):
        scale = block.abs().max()
        levels = qblock / scale
        assert torch.isclose(levels[:, None], NF4_CODE[None, :], atol=1e-6).any(dim=1).all()
        assert torch.isclose(qblock[block.abs().argmax()], block[block.abs().argmax()])  # absmax is exact
    assert len(torch.unique(q[0, :NF4_BLOCK])) <= 16
    assert (w - quantized(w, 8)).norm() < (w - q).norm() / 4


def test_more_iterations_fit_the_weight_no_worse():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    errors = []
    for iterations in (1, 3):
        q, left, right = loftq_factors(w, bits=4, rank=4, iterations=iterations)
        errors.append((w - q - left @ right).norm())
    assert errors[0] < (w - quantized(w, 4)).norm()
    assert errors[1] <= errors[0] * 1.001


@pytest.mark.parametrize("lora", [{"rank": 8, "init": "loftq"},
                                  {"rank": 8, "alpha": 4.0, "use_rslora": True, "init": "loftq",
                                   "loftq": {"bits": 8, "iterations": 2}}])
def test_loftq_starts_closer_to_the_original_model_than_its_quantized_base(tiny, lora):
    with torch.no_grad():
        original = tiny(IDS).logits
    model = apply_method(tiny, MethodConfig(name="lora", lora=lora))
    model.eval()
    with torch.no_grad():
        with model.disable_adapter():
            base_only = model(IDS).logits
        started = model(IDS).logits
    quantization_error = (base_only - original).norm()
    assert quantization_error > 0  # the base weights hold Q(W) now
    assert (started - original).norm() < 0.95 * quantization_error  # random weights: a flat spectrum, a small gain
    assert not model.peft_config["default"].loftq_config  # peft's own LoftQ (bitsandbytes) is not asked for


def test_loftq_on_a_component_moves_its_weights_to_q_and_keeps_its_output_close():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32))
    x = torch.randn(4, 64)
    with torch.no_grad():
        original = module(x)
        first = module[0].weight.clone()
    apply_component_method(module, ComponentMethod(trainable="lora"), LoraConfig(rank=8, init="loftq"),
                           "image.connector")
    assert torch.equal(module[0].base_layer.weight, quantized(first, 4))
    with torch.no_grad():
        assert (module(x) - original).norm() < 0.5 * (x @ (quantized(first, 4) - first).T).norm()


@pytest.mark.parametrize("method, expected", [
    ({"name": "qlora", "lora": {"init": "loftq"}}, "method.lora.init: loftq with method.name: qlora"),
    ({"name": "lora", "lora": {"init": "loftq", "use_dora": True}}, "method.lora.use_dora: DoRA's magnitudes"),
    ({"name": "lora", "lora": {"init": "loftq", "target_modules": ["embed_tokens"]}},
     "loftq initialises LoRA on Linear layers only; base_model.model.model.embed_tokens is Embedding"),
])
def test_what_loftq_cannot_do_is_refused_in_one_line(tiny, method, expected):
    with pytest.raises(ConfigError) as err:
        apply_method(tiny, MethodConfig(**method))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_wrong_loftq_setting_names_its_key():
    with pytest.raises(ConfigError, match="method.lora.loftq.bits"):
        validate_recipe({"method": {"name": "lora", "lora": {"init": "loftq", "loftq": {"bits": 3}}}})
