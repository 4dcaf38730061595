"""The InstructBLIP / BLIP-2 interop's small parts: key mapping, recognition, recipe sections, default format."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mmtune.interop import EXPORTERS, READERS, default_format, reader_for
from mmtune.interop.hf_instructblip import (
    BLIP2, BLIP_READER, INSTRUCTBLIP, flavour_of, image_preprocess_of, qformer_tokenizer_of,
)


def test_blip2_qformer_keys_map_both_ways_and_its_text_feed_forwards_are_dropped():
    ours = "qformer.embeddings.layernorm.weight"
    assert BLIP2.to_checkpoint(ours) == "qformer.layernorm.weight"
    assert BLIP2.from_checkpoint("qformer.layernorm.weight") == ours
    assert INSTRUCTBLIP.to_checkpoint(ours) == ours == INSTRUCTBLIP.from_checkpoint(ours)
    for key in ("query_tokens", "language_projection.bias", "qformer.encoder.layer.0.output_query.dense.weight",
                "qformer.encoder.layer.1.attention.output.dense.weight"):
        assert BLIP2.from_checkpoint(key) == key == BLIP2.to_checkpoint(key)
    # query-only Q-Former: the text feed-forwards of use_qformer_text_input are not the connector's
    assert BLIP2.from_checkpoint("qformer.encoder.layer.0.intermediate.dense.weight") is None
    assert BLIP2.from_checkpoint("qformer.encoder.layer.3.output.LayerNorm.bias") is None
    assert INSTRUCTBLIP.from_checkpoint("qformer.encoder.layer.0.intermediate.dense.weight") is not None
    for flavour in (INSTRUCTBLIP, BLIP2):  # the other parts are read by the language model / vision model
        assert flavour.from_checkpoint("vision_model.post_layernorm.weight") is None
        assert flavour.from_checkpoint("language_model.lm_head.weight") is None


def _dir_with_config(path: Path, model_type: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


def test_directories_are_recognised_by_model_type(tmp_path):
    assert BLIP_READER in READERS
    assert flavour_of(_dir_with_config(tmp_path / "a", "instructblip")) is INSTRUCTBLIP
    assert flavour_of(_dir_with_config(tmp_path / "b", "blip-2")) is BLIP2
    assert reader_for(tmp_path / "a") is BLIP_READER and reader_for(tmp_path / "b") is BLIP_READER
    assert flavour_of(_dir_with_config(tmp_path / "c", "llava")) is None
    assert reader_for(tmp_path / "c") is not BLIP_READER
    assert flavour_of(tmp_path / "missing") is None and flavour_of(None) is None
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("not json")
    assert flavour_of(tmp_path / "d") is None
    assert {"hf-instructblip", "hf-blip2"} <= set(EXPORTERS)


def test_preprocessing_and_qformer_tokenizer_of_a_checkpoint(tmp_path, caplog):
    ckpt = _dir_with_config(tmp_path / "ckpt", "instructblip")
    assert image_preprocess_of(ckpt) == "resize"  # no processor saved: BLIP's resize
    (ckpt / "preprocessor_config.json").write_text(json.dumps({"do_resize": True, "size": {"height": 224}}))
    assert image_preprocess_of(ckpt) == "resize"
    (ckpt / "processor_config.json").write_text(json.dumps({"image_processor": {"do_center_crop": True}}))
    assert image_preprocess_of(ckpt) == "center_crop"
    assert qformer_tokenizer_of(ckpt) == "bert-base-uncased"
    assert "no qformer_tokenizer/" in caplog.text
    (ckpt / "qformer_tokenizer").mkdir()
    assert qformer_tokenizer_of(ckpt) == str(ckpt / "qformer_tokenizer")


def test_default_export_format_follows_the_connector(tiny_llama_dir):
    from mmtune.config.schema import ModelConfig
    from mmtune.modalities.image import ImageBranchConfig
    from mmtune.models.loading import load_causal_lm
    from mmtune.models.open import open_multimodal

    llm = load_causal_lm(ModelConfig(name=str(tiny_llama_dir)))
    assert default_format(llm) == "hf"
    vision = {"model_type": "instructblip_vision_model", "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
    qformer = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    for connector, expected in [
        ({"kind": "qformer", "options": {"num_query_tokens": 2, "tokenizer": "basic", "qformer": qformer}},
         "hf-instructblip"),
        ({"kind": "qformer", "options": {"num_query_tokens": 2, "instruction_aware": False, "qformer": qformer}},
         "hf-blip2"),
        ({"kind": "mlp2x_gelu"}, "hf-llava"),
    ]:
        branch = ImageBranchConfig(encoder={"kind": "hf", "architecture": vision, "select_layer": -1,
                                            "select_feature": "cls_patch"}, connector=connector)
        assert default_format(open_multimodal({"image": branch}, copy.deepcopy(llm))) == expected


def test_generation_prompt_of_a_bos_tokenizer_has_the_bos_training_and_the_processor_have(tokenizer, monkeypatch):
    from mmtune.data.templates import install_template, render
    from mmtune.generation.prompts import encode_conversation

    monkeypatch.setattr(tokenizer, "add_bos_token", True, raising=False)  # as Llama / Vicuna tokenizers
    monkeypatch.setattr(tokenizer, "chat_template", tokenizer.chat_template)  # restored after the test
    install_template(tokenizer, "instructblip")
    messages = [{"role": "user", "content": "What is it?"}]
    trained = render(tokenizer, messages, add_generation_prompt=True)
    assert trained.startswith(tokenizer.bos_token)
    prompt = encode_conversation(object(), tokenizer, messages)  # a text model's prompt: the same template path
    assert prompt.ids == tokenizer(trained, add_special_tokens=False)["input_ids"]
