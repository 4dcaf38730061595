"""Every kind of peft method end to end on the tiny Llama: train (its parameters move), save ``final/``, reload
through ``load_for_inference`` (same logits as the trained model), generate, export; a LoftQ run saved merged;
AdaLoRA's rank allocation inside the loop; a peft method on one component of a multimodal model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import mmtune
from mmtune.errors import ModelError
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.interop.hf_causal_lm import export_hf
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.models.run_outputs import load_for_export, load_for_inference
from mmtune.models.virtual_tokens import VirtualTokenLM, prompt_learning_type
from mmtune.training.tasks import sft

IDS = torch.tensor([[1, 57, 300, 2001, 45, 9, 812, 4000, 77, 5]])

METHODS = {
    "prompt_tuning": {"name": "peft", "peft": {"type": "PromptTuningConfig", "num_virtual_tokens": 4}},
    "p_tuning": {"name": "peft", "peft": {"type": "PromptEncoderConfig", "num_virtual_tokens": 4,
                                          "encoder_hidden_size": 32}},
    "prefix_tuning": {"name": "peft", "peft": {"type": "PrefixTuningConfig", "num_virtual_tokens": 4}},
    "ia3": {"name": "peft", "peft": {"type": "IA3Config"}},
    "loha": {"name": "peft", "peft": {"type": "LoHaConfig", "r": 4}},
    "lokr": {"name": "peft", "peft": {"type": "LoKrConfig", "r": 4}},
    "oft": {"name": "peft", "peft": {"type": "OFTConfig", "r": 0, "oft_block_size": 16}},
    "boft": {"name": "peft", "peft": {"type": "BOFTConfig", "boft_block_size": 4}},
    "vera": {"name": "peft", "peft": {"type": "VeraConfig", "r": 8}},
    "lora_pissa": {"name": "lora", "lora": {"rank": 4, "init": "pissa", "dropout": 0.0}},
    "lora_olora": {"name": "lora", "lora": {"rank": 4, "init": "olora", "dropout": 0.0}},
}


def _inference_view(model):
    return VirtualTokenLM(model) if prompt_learning_type(model) is not None else model


@pytest.fixture()
def watched(monkeypatch):
    """Record the trainable parameters as the method left them, and the trained model's logits before saving."""
    seen = {}
    apply_method, save_final = sft.apply_method, sft.save_final

    def recording_apply(model, cfg):
        model = apply_method(model, cfg)
        seen["start"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return model

    def recording_save(target, model, *args, **kwargs):
        model.eval()
        with torch.no_grad():
            if not isinstance(model, MultimodalLM):  # the multimodal test checks its own way
                seen["logits"] = _inference_view(model)(IDS).logits
        llm = model.llm if isinstance(model, MultimodalLM) else model
        seen["end"] = {n: p.detach().clone() for n, p in llm.named_parameters() if n in seen["start"]}
        return save_final(target, model, *args, **kwargs)

    monkeypatch.setattr(sft, "apply_method", recording_apply)
    monkeypatch.setattr(sft, "save_final", recording_save)
    return seen


def _recipe(tiny_recipe, method: dict, steps: int = 3) -> dict:
    return tiny_recipe(method=method, data={"datasets": [{"card": "mmtune-instruct", "max_samples": 8}]},
                       train={"max_steps": steps, "lr": 3e-2, "warmup_steps": 0, "scheduler": "constant"})


@pytest.mark.parametrize("name", list(METHODS))
def test_peft_method_trains_saves_reloads_generates_and_exports(tiny_recipe, watched, tmp_path, name,
                                                                one_torch_thread):
    run = mmtune.train(_recipe(tiny_recipe, METHODS[name])).run_dir
    moved = [n for n in watched["start"] if not torch.equal(watched["start"][n], watched["end"][n])]
    assert moved, "no trainable parameter changed"
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM"

    model, tok = load_for_inference(str(run))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, watched["logits"], atol=1e-5, rtol=1e-4)
    assert isinstance(generate_reply(model, tok, [{"role": "user", "content": "Hi"}],
                                     GenerationOptions(max_new_tokens=3)), str)

    out = export_hf(*load_for_export(str(run)), tmp_path / "export")
    if isinstance(model, VirtualTokenLM):  # nothing to merge: the base model and the adapter beside it
        assert (out / "adapter" / "adapter_config.json").is_file() and (out / "model.safetensors").is_file()
        return
    from transformers import AutoModelForCausalLM

    assert not (out / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(IDS).logits, watched["logits"], atol=1e-4, rtol=1e-4)


def test_a_loftq_run_saves_merged_weights_that_reload_and_export_as_trained(tiny_recipe, watched, tmp_path,
                                                                            one_torch_thread):
    """The adapter fits the quantized base Q(W) only, so final/ holds Q(W) + BA merged: a plain model directory."""
    from transformers import AutoModelForCausalLM

    method = {"name": "lora", "lora": {"rank": 4, "init": "loftq", "dropout": 0.0, "loftq": {"iterations": 2}}}
    run = mmtune.train(_recipe(tiny_recipe, method)).run_dir
    assert any(not torch.equal(watched["start"][n], watched["end"][n]) for n in watched["start"])
    final = run / "final"
    assert (final / "config.json").is_file() and not (final / "adapter_config.json").exists()
    assert json.loads((final / "mmtune.json").read_text())["method"] == "lora"
    assert not (run / "initial-adapter").exists()

    model, _ = load_for_inference(str(run))
    assert not hasattr(model, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, watched["logits"], atol=1e-5, rtol=1e-5)
    out = export_hf(*load_for_export(str(run)), tmp_path / "export")
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out).eval()
        torch.testing.assert_close(exported(IDS).logits, watched["logits"], atol=1e-5, rtol=1e-5)


def test_adalora_reallocates_ranks_inside_the_loop(tiny_recipe, watched, one_torch_thread):
    """6 steps: warm-up 1, budgeting down to target_r, 2 final steps; the saved adapter holds the allocated ranks."""
    method = {"name": "peft", "peft": {"type": "AdaLoraConfig", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 2,
                                       "deltaT": 1, "target_modules": ["q_proj", "v_proj"]}}
    run = mmtune.train(_recipe(tiny_recipe, method, steps=6)).run_dir
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["total_step"] == 6  # the run's step count, not a recipe value
    ranks = {name: sum(kept) for name, kept in config["rank_pattern"].items()}
    assert len(ranks) == 4 and all(len(kept) == 6 for kept in config["rank_pattern"].values())
    assert sum(ranks.values()) == 2 * 4  # the budget: target_r per adapted layer, spread by importance
    saved = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert sorted(v.shape[0] for k, v in saved.items() if "lora_E" in k) == sorted(ranks.values())
    model, _ = load_for_inference(str(run))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, watched["logits"], atol=1e-5, rtol=1e-4)


def test_an_adalora_run_resumed_after_a_crash_allocates_as_an_uninterrupted_one(tiny_recipe, tmp_path, monkeypatch,
                                                                                one_torch_thread):
    """The importance averages and allocated ranks are checkpointed: resumed at step 4 of 6 (ranks are final after
    step 4, later steps mask by them), the run ends with the same ranks and the same losses."""
    from mmtune.training import loop

    method = {"name": "peft", "peft": {"type": "AdaLoraConfig", "init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 3,
                                       "deltaT": 1, "target_modules": ["q_proj", "v_proj"]}}

    def run(out, **train):
        recipe = _recipe(tiny_recipe, method, steps=6)
        recipe["output_dir"] = str(tmp_path / out)
        recipe["train"].update(train)
        return recipe

    reference = mmtune.train(run("ref")).run_dir
    recipe = run("cut", save_every=4)
    original = loop.MetricsLogger.log

    def crash_after_step_5(self, record):
        original(self, record)
        if record.get("step") == 5:
            raise RuntimeError("crash")

    with monkeypatch.context() as m:
        m.setattr(loop.MetricsLogger, "log", crash_after_step_5)
        with pytest.raises(RuntimeError):
            mmtune.train(recipe)
    recipe["train"]["resume"] = "auto"
    resumed = mmtune.train(recipe).run_dir

    def ranks_and_losses(run_dir):
        config = json.loads((run_dir / "final" / "adapter_config.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return config["rank_pattern"], {r["step"]: r["loss"] for r in records if "loss" in r}

    (ref_ranks, ref_losses), (ranks, losses) = ranks_and_losses(reference), ranks_and_losses(resumed)
    assert ranks == ref_ranks
    assert sum(map(sum, ranks.values())) == 2 * 4
    for step in (5, 6):
        assert losses[step] == pytest.approx(ref_losses[step], abs=1e-6)


def test_a_peft_method_on_one_component_trains_saves_and_reloads(tiny_recipe, photos, tmp_path, monkeypatch,
                                                                one_torch_thread):
    from media_helpers import llava_rows, open_clip_image_branch, write_json

    from mmtune.data.media import attach_media

    before = {}
    apply_component_method = sft.apply_component_method

    def recording(module, method, lora, name):
        before[name] = {k: v.clone() for k, v in module.state_dict().items()}
        return apply_component_method(module, method, lora, name)

    monkeypatch.setattr(sft, "apply_component_method", recording)

    data = write_json(tmp_path / "d.json", llava_rows(4))
    recipe = tiny_recipe()
    recipe["model"]["media"] = {"image": open_clip_image_branch().model_dump(mode="json")}
    recipe["data"]["datasets"] = [{"path": str(data), "format": "llava", "media_folder": str(photos)}]
    recipe["method"] = {"name": "frozen", "media": {"image": {
        "connector": {"trainable": "peft", "peft": {"type": "LoHaConfig", "r": 2, "alpha": 4}}}}}
    recipe["train"].update(max_steps=3, lr=3e-2, warmup_steps=0)
    result = mmtune.train(recipe)
    log = (result.run_dir / "train.log").read_text()
    assert "image.connector: peft" in log
    saved = load_file(str(result.final_dir / "media.safetensors"))
    connector_keys = {k.removeprefix("image.connector.") for k in saved if k.startswith("image.connector.")}
    assert connector_keys == set(before["image.connector"])  # merged into the plain layout: no adapter keys
    assert not torch.equal(saved["image.connector.layers.0.weight"], before["image.connector"]["layers.0.weight"])

    model, tok = load_for_inference(str(result.run_dir))
    for key, value in model.branches["image"].connector.state_dict().items():
        torch.testing.assert_close(value, saved[f"image.connector.{key}"])
    reply = generate_reply(model, tok, attach_media([{"role": "user", "content": "What is it?"}],
                                                    [("image", str(photos / "p0.png"))]),
                           GenerationOptions(max_new_tokens=2))
    assert isinstance(reply, str)


def test_virtual_tokens_in_front_of_a_multimodal_model_train_reload_and_decode(tiny_recipe, photos, tmp_path,
                                                                               watched, one_torch_thread):
    """Prompt tuning on a LLaVA-style model: the virtual tokens go before the embeddings with the image spliced in;
    the reloaded model decodes through its KV cache exactly as a cache-free greedy loop does."""
    from media_helpers import llava_rows, open_clip_image_branch, write_json

    from mmtune.data.media import attach_media
    from mmtune.generation.decoding import SingleModel, decode_batch
    from mmtune.generation.prompts import encode_conversation, media_inputs

    recipe = tiny_recipe()
    recipe["model"]["media"] = {"image": open_clip_image_branch().model_dump(mode="json")}
    recipe["data"]["datasets"] = [{"path": str(write_json(tmp_path / "d.json", llava_rows(4))), "format": "llava",
                                   "media_folder": str(photos)}]
    recipe["method"] = {"name": "peft", "peft": {"type": "PromptTuningConfig", "num_virtual_tokens": 3}}
    recipe["train"].update(max_steps=3, lr=3e-2, warmup_steps=0)
    run = mmtune.train(recipe).run_dir
    assert not torch.equal(watched["start"]["prompt_encoder.default.embedding.weight"],
                           watched["end"]["prompt_encoder.default.embedding.weight"])

    model, tok = load_for_inference(str(run))
    assert isinstance(model, MultimodalLM) and isinstance(model.llm, VirtualTokenLM)
    torch.testing.assert_close(model.llm.peft_model.get_prompt(1)[0],
                               watched["end"]["prompt_encoder.default.embedding.weight"])
    conversation = attach_media([{"role": "user", "content": "What is it?"}], [("image", str(photos / "p0.png"))])
    prompt = encode_conversation(model, tok, conversation)
    media = media_inputs(model, tok, prompt.media)
    decoded = decode_batch(SingleModel(model), [prompt.ids], GenerationOptions(max_new_tokens=3, temperature=0.0),
                           stop_ids=[], pad_id=0, media=media)
    tokens = list(prompt.ids)
    with torch.no_grad():
        for _ in range(3):
            tokens.append(int(model(input_ids=torch.tensor([tokens]), media=media).logits[0, -1].argmax()))
    assert decoded == [tokens[len(prompt.ids):]]
    with pytest.raises(ModelError, match="adds virtual tokens, which no multimodal Hugging Face checkpoint holds"):
        load_for_export(str(run))
