"""The instruction-aware Q-Former end to end: training lowers the loss, resume is exact, the saved run reloads
with the same outputs and chats about an image; the Perceiver resampler and BLIP-2's Q-Former train too.

Tiny random encoder (open_clip, no weights), tiny Q-Former (``tokenizer: basic``) and the tiny Llama, on CPU.
"""

from __future__ import annotations

import pytest
import torch
from media_helpers import OPEN_CLIP_TINY, llava_rows, losses_by_step, write_json

import mmtune
from mmtune.data.media import attach_media
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.generation.prompts import encode_conversation, media_inputs
from mmtune.models.run_outputs import load_for_inference

TINY_QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _recipe(tiny_recipe, tmp_path, data, out, connector=None) -> dict:
    recipe = tiny_recipe()
    recipe["output_dir"] = str(tmp_path / out)
    connector = connector or {"kind": "qformer", "options": {"num_query_tokens": 4, "tokenizer": "basic",
                                                             "qformer": TINY_QFORMER}}
    recipe["model"]["media"] = {"image": {
        "encoder": {"kind": "open_clip", "pretrained": None, "architecture": OPEN_CLIP_TINY,
                    "select_feature": "cls_patch"},
        "pieces": {"ln_vision": {"kind": "layer_norm"}},
        "connector": connector,
        "image_preprocess": "resize",
    }}
    recipe["data"]["datasets"] = [{"path": str(data), "format": "llava", "media_folder": str(tmp_path / "images")}]
    recipe["data"]["template"] = "instructblip"
    recipe["data"]["num_workers"] = 1
    recipe["method"] = {"name": "frozen", "media": {"image": {"encoder": {"trainable": "frozen"}}}}
    recipe["train"].update(max_steps=6, micro_batch_size=2, lr=5e-3, warmup_steps=0, scheduler="constant")
    return recipe


def _single_turn_rows(n: int = 8) -> list[dict]:
    """InstructBLIP-style samples: one image, one instruction, one short answer."""
    return [{"id": str(i), "image": f"p{i % 4}.png", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion: what is in picture {i % 4}? Short answer:"},
        {"from": "gpt", "value": f"noise {i % 4}"}]} for i in range(n)]


def test_qformer_trains_reloads_and_chats(tiny_recipe, photos, tmp_path):
    data = write_json(tmp_path / "d.json", _single_turn_rows())
    result = mmtune.train(_recipe(tiny_recipe, tmp_path, data, "qformer"))
    losses = losses_by_step(result.run_dir)
    assert losses[-1] < losses[0]

    model, tok = load_for_inference(str(result.run_dir))
    branch = model.branches["image"]
    assert type(branch.connector).__name__ == "QFormerConnector" and branch.num_tokens == 4
    assert branch.connector.text_tokenizer.tokenize("what is in") == ["what", "is", "in"]
    # What trained came back: ln_vision (a piece, trained as in LAVIS) moved away from its initial identity,
    # and the saved Q-Former weights are the ones loaded.
    from safetensors.torch import load_file

    saved = load_file(str(result.run_dir / "final" / "media.safetensors"))
    assert not torch.allclose(branch.pieces["ln_vision"].norm.weight, torch.ones(OPEN_CLIP_TINY["vision_cfg"]["width"]))
    torch.testing.assert_close(branch.connector.query_tokens, saved["image.connector.query_tokens"])

    # The same image under two instructions: the Q-Former's output differs, so the instruction reaches it.
    ask = [attach_media([{"role": "user", "content": q}], [("image", str(photos / "p0.png"))])
           for q in ("Question: what is in picture 0? Short answer:", "How many animals?")]
    outs = []
    for messages in ask:
        prompt = encode_conversation(model, tok, messages)
        assert prompt.ids[:4] == [-200] * 4  # the query outputs come first (instructblip template)
        inputs = media_inputs(model, tok, prompt.media)
        with torch.no_grad():
            outs.append(branch(inputs["image"]))
    assert not torch.allclose(outs[0], outs[1])
    assert isinstance(generate_reply(model, tok, ask[0], GenerationOptions(max_new_tokens=3)), str)


def test_qformer_resume_matches_an_uninterrupted_run(tiny_recipe, photos, tmp_path):
    data = write_json(tmp_path / "d.json", llava_rows())
    full = _recipe(tiny_recipe, tmp_path, data, "full")
    full["data"]["template"] = "auto"  # multi-turn rows: the chat template
    mmtune.train(full)
    part = _recipe(tiny_recipe, tmp_path, data, "part")
    part["data"]["template"] = "auto"
    part["train"].update(max_steps=3, save_every=3)
    mmtune.train(part)
    part["train"].update(max_steps=6, resume="auto")
    mmtune.train(part)
    assert losses_by_step(tmp_path / "part")[3:] == pytest.approx(losses_by_step(tmp_path / "full")[3:], abs=1e-6)


@pytest.mark.parametrize("connector", [
    {"kind": "qformer", "options": {"num_query_tokens": 3, "instruction_aware": False, "qformer": TINY_QFORMER}},
    {"kind": "perceiver", "options": {"depth": 1, "heads": 2, "dim_head": 8, "num_latents": 3}},
], ids=["blip2-qformer", "perceiver"])
def test_fixed_token_connectors_without_text_train(tiny_recipe, photos, tmp_path, connector):
    data = write_json(tmp_path / "d.json", _single_turn_rows())
    result = mmtune.train(_recipe(tiny_recipe, tmp_path, data, "run", connector=connector))
    assert losses_by_step(result.run_dir)[-1] < losses_by_step(result.run_dir)[0]
    model, _ = load_for_inference(str(result.run_dir))
    assert model.branches["image"].num_tokens == 3 and not model.branches["image"].connector.wants_text


def test_a_sample_that_starts_with_more_than_64_media_positions_trains(tiny_recipe, photos, tmp_path):
    """The instructblip layout with a projector: 65 image positions first, text after (the head check probes
    the sample's text tokens, wherever they start)."""
    data = write_json(tmp_path / "d.json", _single_turn_rows(4))
    recipe = _recipe(tiny_recipe, tmp_path, data, "long", connector={"kind": "linear"})
    recipe["model"]["media"]["image"]["encoder"] = {
        "kind": "hf", "select_layer": -1, "select_feature": "cls_patch",
        "architecture": {"model_type": "instructblip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                         "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 64, "patch_size": 8}}
    recipe["model"]["media"]["image"].pop("pieces")
    recipe["train"]["max_steps"] = 2
    result = mmtune.train(recipe)
    assert len(losses_by_step(result.run_dir)) == 2
