"""``method.name: peft`` without training: recipe checks, peft's own errors as one line, virtual tokens placed as peft
places them (and decoded with a KV cache, and packed), LoRA+ groups, AdaLoRA's schedule check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mmtune.config.loader import validate_recipe
from mmtune.config.schema import MethodConfig, ModelConfig, TrainConfig
from mmtune.data.packing import Collator
from mmtune.errors import ConfigError
from mmtune.generation.decoding import SingleModel, decode_batch
from mmtune.generation.options import GenerationOptions
from mmtune.models.loading import load_causal_lm
from mmtune.models.virtual_tokens import VirtualTokenLM
from mmtune.training.methods import apply_method, param_groups
from mmtune.training.objective import CausalLMObjective
from mmtune.training.peft_methods import AdaLoraAllocation, check_virtual_tokens, inject_component_peft, step_hook

VIRTUAL = {
    "prompt": {"type": "PromptTuningConfig", "num_virtual_tokens": 3},
    "p_tuning": {"type": "PromptEncoderConfig", "num_virtual_tokens": 3, "encoder_hidden_size": 16},
    "prefix": {"type": "PrefixTuningConfig", "num_virtual_tokens": 3},
}


@pytest.fixture()
def tiny(tiny_llama_dir, one_torch_thread):
    return load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))


def _peft(model, section):
    return apply_method(model, MethodConfig(name="peft", peft=section))


@pytest.mark.parametrize("method, expected", [
    ({"name": "peft", "peft": {"type": "LohaConfig"}},
     "method.peft: type: unknown peft config class 'LohaConfig' (did you mean 'LoHaConfig'?); valid: AdaLoraConfig"),
    ({"name": "peft", "peft": {"type": "PrefixTuningConfig", "num_virtual_token": 3}},
     "method.peft: num_virtual_token: not an option of PrefixTuningConfig (did you mean 'num_virtual_tokens'?)"),
    ({"name": "peft", "peft": {"type": "IA3Config", "task_type": "SEQ_CLS"}},
     "method.peft: task_type: not a recipe option (filled in by mmtune"),
    ({"name": "peft", "peft": {"type": "AdaLoraConfig", "total_step": 10}},
     "method.peft: total_step: not a recipe option (the run's optimizer step count"),
    ({"name": "peft", "peft": {"r": 4}}, "method.peft: needs 'type'"),
    ({"name": "peft"}, "'name: peft' and a 'peft' section go together"),
    ({"name": "lora", "peft": {"type": "IA3Config"}}, "'name: peft' and a 'peft' section go together"),
    ({"name": "frozen", "media": {"image": {"connector": {"trainable": "peft", "peft": {"type": "LoHaConfig",
                                                                                        "rr": 2}}}}},
     "method.media.image.connector.peft: rr: not an option of LoHaConfig (did you mean 'r'?)"),
])
def test_a_wrong_peft_section_is_one_line_naming_the_key_and_the_choices(method, expected):
    with pytest.raises(ConfigError) as err:
        validate_recipe({"method": method})
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("section, expected", [
    ({"type": "OFTConfig", "r": 4, "oft_block_size": 16}, "method.peft: OFTConfig: "),  # peft's own check
    ({"type": "LoHaConfig", "target_modules": ["nope"]}, "method.peft: LoHaConfig: "),  # nothing to adapt
    ({"type": "MultitaskPromptTuningConfig", "num_virtual_tokens": 2}, "is not supported (it needs task ids"),
])
def test_what_peft_refuses_is_one_line(tiny, section, expected):
    with pytest.raises(ConfigError) as err:
        _peft(tiny, section)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_component_prompt_learning_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="works on the LLM only"):
        inject_component_peft(nn.Sequential(nn.Linear(4, 4)), VIRTUAL["prompt"], "image.connector")
    with pytest.raises(ConfigError, match="has no Linear layer"):
        inject_component_peft(nn.Sequential(nn.LayerNorm(4)), {"type": "LoHaConfig"}, "image.pieces.ln")


@pytest.mark.parametrize("name", list(VIRTUAL))
def test_virtual_tokens_give_peft_logits_and_decode_through_the_cache(tiny, name):
    model = _peft(tiny, VIRTUAL[name]).eval()
    with torch.no_grad():  # init_weights off for prompt / prefix would keep them at zero: peft's init is random
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    ours = VirtualTokenLM(model)
    ids = torch.randint(3, 1000, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -ids.shape[1]:]
        torch.testing.assert_close(ours(ids).logits, reference, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model.get_base_model()(ids).logits, reference, atol=1e-3)  # the tokens count

    def greedy_without_cache(prompt: list[int], n: int) -> list[int]:
        tokens = list(prompt)
        with torch.no_grad():
            for _ in range(n):
                tokens.append(int(ours(torch.tensor([tokens])).logits[0, -1].argmax()))
        return tokens[len(prompt):]

    prompts = [ids[0].tolist(), ids[0, :4].tolist()]  # the second one is left-padded in the batch
    greedy = GenerationOptions(max_new_tokens=4, temperature=0.0)
    decoded = decode_batch(SingleModel(ours), prompts, greedy, stop_ids=[], pad_id=0)
    assert decoded == [greedy_without_cache(p, 4) for p in prompts]


@pytest.mark.parametrize("name", ["prompt", "prefix"])
def test_packed_rows_with_virtual_tokens_train_like_unpacked_ones(tiny, name):
    model = _peft(tiny, VIRTUAL[name])
    rng = np.random.default_rng(0)
    samples = [(rng.integers(3, 1000, n).astype(np.int32), np.arange(n) >= n // 2) for n in (9, 14, 6)]
    objective = CausalLMObjective(model)
    results = []
    for rows in ([[0, 1, 2]], [[0], [1], [2]]):  # one packed row, then one row per sample
        model.zero_grad()
        loss, n = objective(Collator(samples, pad_id=0)(rows))
        loss.backward()
        results.append((loss.detach(), int(n), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (packed, n_packed, g_packed), (alone, n_alone, g_alone) = results
    assert n_packed == n_alone > 0
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
    for a, b in zip(g_packed, g_alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_virtual_tokens_are_refused_without_an_explicit_mask(tiny):
    model = _peft(tiny, VIRTUAL["prefix"])
    with pytest.raises(ConfigError, match="needs the explicit attention mask"):
        check_virtual_tokens(model, block_mask=False)
    check_virtual_tokens(model, block_mask=True)  # packing with the block mask is fine


def test_loraplus_puts_the_b_matrices_in_a_faster_group(tiny, tiny_llama_dir):
    model = apply_method(tiny, MethodConfig(name="lora", lora={"rank": 2, "loraplus_lr_ratio": 16}))
    groups, summary = param_groups(CausalLMObjective(model), MethodConfig(lora={"loraplus_lr_ratio": 16}),
                                   TrainConfig(lr=1e-3))
    by_name = {g.name: g for g in summary}
    assert by_name["default (LoRA+ B)"].lr == pytest.approx(16e-3) and by_name["default"].lr == 1e-3
    b_ids = {id(p) for n, p in model.named_parameters() if ".lora_B." in n}
    for group in groups:
        assert all((id(p) in b_ids) == group["name"].endswith("(LoRA+ B)") for p in group["params"])
    with pytest.raises(ConfigError, match="loraplus_lr_ratio: no LoRA B matrix trains"):
        param_groups(CausalLMObjective(load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))),
                     MethodConfig(name="full", lora={"loraplus_lr_ratio": 16}), TrainConfig())


def test_adalora_schedule_must_fit_the_run(tiny, tiny_llama_dir):
    model = _peft(tiny, {"type": "AdaLoraConfig", "init_r": 4, "target_r": 2, "tinit": 3, "tfinal": 3})
    hook = step_hook(model)
    assert isinstance(hook, AdaLoraAllocation)
    with pytest.raises(ConfigError, match=r"tinit \(3\) and tfinal \(3\) leave no step of this run's 5"):
        hook(0, 5)
    assert step_hook(apply_method(load_causal_lm(ModelConfig(name=str(tiny_llama_dir))), MethodConfig())) is None


def test_adalora_loss_has_peft_orthogonality_term(tiny):
    """The objective's loss is peft's own AdaLoRA loss: cross-entropy plus orth_reg_weight * ||P Pᵀ - I||."""
    from mmtune.training.peft_methods import loss_penalty

    model = _peft(tiny, {"type": "AdaLoraConfig", "init_r": 4, "target_r": 2, "orth_reg_weight": 0.5})
    with torch.no_grad():  # peft starts Q at zero; make the term and the predictions non-trivial
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    ids = np.arange(3, 19, dtype=np.int32) * 7  # 16 tokens: one row, no padding, every position trained
    batch = Collator([(ids, np.ones(16, bool))], pad_id=0)([[0]])
    model.train()
    objective = CausalLMObjective(model, penalty=loss_penalty(model))
    loss_sum, n = objective(batch)
    reference = model(input_ids=batch.input_ids, labels=batch.input_ids).loss
    torch.testing.assert_close(loss_sum / n, reference, atol=1e-5, rtol=1e-5)
    assert float(loss_penalty(model)()) > 0.01


def test_prompt_tuning_from_text_reads_the_model_s_own_tokenizer(tiny, tokenizer):
    """``prompt_tuning_init: TEXT`` needs a tokenizer; the model's directory is filled in, so an alias works too."""
    model = _peft(tiny, {"type": "PromptTuningConfig", "num_virtual_tokens": 3, "prompt_tuning_init": "TEXT",
                         "prompt_tuning_init_text": "Answer briefly:"})
    ids = tokenizer("Answer briefly:", add_special_tokens=False)["input_ids"][:3]
    table = model.get_base_model().get_input_embeddings().weight
    torch.testing.assert_close(model.get_prompt(1)[0][: len(ids)], table[ids])
