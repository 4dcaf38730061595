"""Trained runs as inputs of the other tools: a LoRA run evaluated alone and as a proxy expert; self-correction
rows built by the builder train through their format."""

from __future__ import annotations

import pytest
from conftest import sharegpt_rows, write_jsonl

import mmtune
from mmtune.datagen.self_correction import QuestionFields, build_self_correction
from mmtune.evaluation import evaluate
from mmtune.generation.options import GenerationOptions

CONVS = [
    [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "6 times 7 is 42."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of Italy?"},
     {"role": "assistant", "content": "Rome."}],
]
OPTS = GenerationOptions(max_new_tokens=8)
QUESTIONS = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": "ok" if i % 2 else "no",
              "solution": f"{i} + {i} = {2 * i}."} for i in range(5)]


def test_a_trained_lora_run_as_model_and_as_proxy_expert(tmp_path, tiny_recipe, tiny_llama_dir, one_torch_thread):
    """Run directories load through load_for_inference (peft adapter unmerged) and decode in lockstep."""
    from mmtune.generation.proxy import load_proxy
    from mmtune.models.run_outputs import load_for_inference

    run = mmtune.train(tiny_recipe(train={"max_steps": 2, "lr": 5e-2}))
    data = write_jsonl(tmp_path / "held.jsonl", sharegpt_rows(CONVS))
    tuned, tok = load_for_inference(str(run.run_dir))
    assert hasattr(tuned, "peft_config")
    alone = evaluate(tuned, tok, data, opts=OPTS, progress=False)
    proxy, proxy_tok = load_proxy(str(tiny_llama_dir), str(run.run_dir), str(tiny_llama_dir), alpha=1.0)
    steered = evaluate(proxy, proxy_tok, data, opts=OPTS, progress=False)
    assert steered.metrics["loss"]["loss"] == pytest.approx(alone.metrics["loss"]["loss"], rel=1e-4)
    assert [r["prediction"] for r in steered.records] == [r["prediction"] for r in alone.records]
    untuned = evaluate(proxy.base, proxy_tok, data, metrics=["loss"], progress=False)
    assert untuned.metrics["loss"]["loss"] != pytest.approx(alone.metrics["loss"]["loss"], rel=1e-3)


def test_builder_output_trains_through_the_self_correction_format(tmp_path, tiny_llama_dir, tiny_recipe):
    from mmtune.models.run_outputs import load_for_inference

    out = tmp_path / "sc.jsonl"
    questions = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    build_self_correction(questions, out, loaded=load_for_inference(str(tiny_llama_dir)),
                          judge=lambda answer, gold: {"ok": True, "no": False}.get(gold),
                          fields=QuestionFields(revision="solution"), samples_per_question=2, batch_size=2,
                          max_new_tokens=6, seed=3, progress=False)
    assert len(out.read_text().splitlines()) == 2 * len(QUESTIONS)
    result = mmtune.train(tiny_recipe(out, fmt="self_correction", train={"max_steps": 2}))
    assert result.steps == 2 and result.final_loss == result.final_loss  # finite, not NaN
