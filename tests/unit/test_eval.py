"""``mmtune eval``: judges, the answer-only loss (masked exactly as in training), reports, formats, proxy, CLI."""

from __future__ import annotations

import json

import pytest
from PIL import Image
import torch
from transformers import AutoModelForCausalLM

from conftest import sharegpt_rows, write_jsonl
from mmtune.generation.options import GenerationOptions
from mmtune.cli import main
from mmtune.errors import ConfigError, DataError
from mmtune.evaluation import (
    answer_loss, evaluate, exact_match, extract_number, load_eval_data, normalize_answer, numeric_match,
)
from mmtune.generation.decoding import generate_texts
from mmtune.generation.proxy import ProxyTuned

CONVS = [
    [{"role": "user", "content": "What is 6 times 7?"}, {"role": "assistant", "content": "6 times 7 is 42."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of Italy?"},
     {"role": "assistant", "content": "Rome."}],
    [{"role": "user", "content": "Pick a colour."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And another one, different from the first?"},
     {"role": "assistant", "content": "Green, which is different."}],
]
OPTS = GenerationOptions(max_new_tokens=8)


@pytest.fixture(scope="module")
def models(varied_llama_dirs, one_torch_thread):
    return [AutoModelForCausalLM.from_pretrained(d).eval() for d in varied_llama_dirs]


@pytest.mark.parametrize(("pred", "gold", "want"), [
    ("The Eiffel Tower!", "eiffel tower", True),
    ("  An  apple.", "apple", True),
    ("Paris, France", "Paris", False),
])
def test_exact_match_normalises_case_punctuation_articles_and_spaces(pred, gold, want):
    assert exact_match(pred, gold) is want
    assert normalize_answer("The  Quick, brown fox.") == "quick brown fox"


def test_numbers_and_numeric_match():
    assert extract_number("from 3 to 1,250.5 apples") == 1250.5
    assert extract_number("from -3 to 12", "first") == -3
    assert extract_number("no digits here") is None
    assert numeric_match("So the answer is 42.", "#### 42") is True
    assert numeric_match("It is 41 or so", "42") is False
    assert numeric_match("1000.0004", "1000", tolerance=1e-6) is True  # relative to the gold's size
    assert numeric_match("7 then 9", "7", which="first") is True and numeric_match("7 then 9", "7") is False
    assert numeric_match("no number", "5") is False
    assert numeric_match("42", "no number in the gold") is None


def test_loss_uses_the_training_mask_and_equals_transformers_loss(tmp_path, models, smol_tokenizer):
    from mmtune.config.schema import DataConfig, DataSource
    from mmtune.data.sources import ResolvedSource
    from mmtune.data.pipeline import tokenize_source

    path = write_jsonl(tmp_path / "d.jsonl", sharegpt_rows(CONVS))
    tokenized = tokenize_source(smol_tokenizer, ResolvedSource("d", DataSource(path=str(path), format="sharegpt")),
                                DataConfig(max_length=512))
    model = models[0]
    sums, counts, truncated = answer_loss(model, smol_tokenizer, CONVS, max_length=512, batch_size=3, progress=False)
    singles = [answer_loss(model, smol_tokenizer, [c], max_length=512, progress=False) for c in CONVS]
    assert truncated == 0
    for i in range(len(CONVS)):
        ids, trained = tokenized.sample(i)
        labels = torch.where(torch.from_numpy(trained.copy()), torch.from_numpy(ids.astype("int64")), -100)
        with torch.no_grad():
            want = model(torch.from_numpy(ids.astype("int64"))[None], labels=labels[None]).loss.item()
        assert counts[i] == int(trained[1:].sum()) > 0
        assert sums[i] / counts[i] == pytest.approx(want, rel=1e-5)
        assert singles[i][0][0] == pytest.approx(sums[i], rel=1e-5)  # left padding changes nothing


def test_evaluate_reports_figures_counts_and_records(models, smol_tokenizer):
    model = models[0]
    preds = generate_texts(model, smol_tokenizer, [c[:-1] for c in CONVS], OPTS, progress=False)
    convs = [c[:-1] + [{"role": "assistant", "content": gold}] for c, gold in
             zip(CONVS, [preds[0], preds[1].upper() + "!", "certainly not this"])]
    report = evaluate(model, smol_tokenizer, convs, opts=OPTS, progress=False)
    assert [r["prediction"] for r in report.records] == preds
    assert report.metrics["exact"] == {"accuracy": 2 / 3, "correct": 2, "count": 3}
    golds = [c[-1]["content"] for c in convs]
    numeric = report.metrics["numeric"]
    assert numeric["no_gold_number"] == sum(extract_number(g) is None for g in golds)
    assert numeric["count"] + numeric["no_gold_number"] == 3
    sums, counts, _ = answer_loss(model, smol_tokenizer, convs, progress=False)
    assert report.metrics["loss"]["tokens"] == sum(counts)
    assert report.metrics["loss"]["loss"] == pytest.approx(sum(sums) / sum(counts))
    assert report.records[1]["prompt"] == "Capital of Italy?" and report.records[1]["exact"] is True
    only_loss = evaluate(model, smol_tokenizer, convs, metrics=["loss"], records=False, progress=False)
    assert set(only_loss.metrics) == {"loss"} and "records" not in only_loss.to_dict()


def test_every_format_and_a_card_give_the_same_conversations(tmp_path, models, smol_tokenizer):
    simple = [c for c in CONVS if len(c) == 2]
    alpaca = write_jsonl(tmp_path / "a.jsonl", [{"instruction": c[0]["content"], "output": c[1]["content"]} for c in simple])
    openai = write_jsonl(tmp_path / "o.jsonl", [{"messages": c} for c in simple])
    sharegpt = write_jsonl(tmp_path / "s.jsonl", sharegpt_rows(simple))
    dolly = write_jsonl(tmp_path / "d.jsonl", [{"instruction": c[0]["content"], "response": c[1]["content"]} for c in simple])
    for path in (alpaca, openai, sharegpt, dolly):
        loaded = load_eval_data(path)
        assert [c for _, c in loaded.conversations] == simple and loaded.skipped == {}, path
    reports = [evaluate(models[1], smol_tokenizer, p, metrics=["loss"], progress=False) for p in (alpaca, sharegpt)]
    assert reports[0].metrics == reports[1].metrics
    card = load_eval_data("mmtune-instruct", max_samples=4).conversations
    assert len(card) == 4 and card[0][0].endswith("train.jsonl:1")


def test_proxy_evaluation(models, smol_tokenizer):
    base, expert, anti = models
    expert_report = evaluate(expert, smol_tokenizer, CONVS, opts=OPTS, progress=False)
    steered = evaluate(ProxyTuned(base, expert, base, alpha=1.0), smol_tokenizer, CONVS, opts=OPTS, progress=False)
    assert [r["prediction"] for r in steered.records] == [r["prediction"] for r in expert_report.records]
    assert steered.metrics["loss"]["loss"] == pytest.approx(expert_report.metrics["loss"]["loss"], rel=1e-4)
    off = evaluate(ProxyTuned(base, expert, anti, alpha=0.0), smol_tokenizer, CONVS, metrics=["loss"], progress=False)
    plain = evaluate(base, smol_tokenizer, CONVS, metrics=["loss"], progress=False)
    assert off.metrics["loss"]["loss"] == pytest.approx(plain.metrics["loss"]["loss"], rel=1e-5)
    half = evaluate(ProxyTuned(base, expert, anti, alpha=0.5), smol_tokenizer, CONVS, metrics=["loss"], progress=False)
    assert half.metrics["loss"]["loss"] != pytest.approx(plain.metrics["loss"]["loss"], rel=1e-3)


def test_eval_command_writes_the_json_report(tmp_path, capsys, varied_llama_dirs, models, smol_tokenizer):
    data = write_jsonl(tmp_path / "held.jsonl", sharegpt_rows(CONVS))
    out = tmp_path / "report.json"
    base, expert = (str(d) for d in varied_llama_dirs[:2])
    assert main(["eval", base, "--data", str(data), "--metric", "exact", "--metric", "loss", "--out", str(out),
                 "--max-new-tokens", "8", "--batch-size", "2"]) == 0
    report = json.loads(out.read_text())
    want = evaluate(models[0], smol_tokenizer, data, metrics=["exact", "loss"], opts=OPTS, progress=False)
    assert set(report["metrics"]) == {"exact", "loss"} and report["samples"] == 3 and len(report["records"]) == 3
    assert report["metrics"]["exact"] == want.metrics["exact"]
    assert report["metrics"]["loss"]["loss"] == pytest.approx(want.metrics["loss"]["loss"], rel=1e-5)
    assert "report in" in capsys.readouterr().err
    proxy_out = tmp_path / "proxy.json"
    assert main(["eval", base, "--data", str(data), "--out", str(proxy_out), "--metric", "loss",
                 "--proxy-expert", expert, "--proxy-antiexpert", base, "--no-records"]) == 0
    proxied = json.loads(proxy_out.read_text())
    assert "records" not in proxied and proxied["model"].startswith("proxy(")
    expert_loss = evaluate(models[1], smol_tokenizer, data, metrics=["loss"], progress=False).metrics["loss"]["loss"]
    assert proxied["metrics"]["loss"]["loss"] == pytest.approx(expert_loss, rel=1e-4)


def test_bad_input_is_one_clear_line(tmp_path, capsys, varied_llama_dirs, models, smol_tokenizer):
    with pytest.raises(DataError, match="missing.jsonl: data file not found"):
        evaluate(models[0], smol_tokenizer, tmp_path / "missing.jsonl", progress=False)
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"odd.jsonl:1: cannot tell the data format .*--format"):
        evaluate(models[0], smol_tokenizer, odd, progress=False)
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"instruction": "q", "output": "a"}, {"instruction": "q"}])
    with pytest.raises(DataError, match=r"broken.jsonl:2: field 'output'"):
        evaluate(models[0], smol_tokenizer, broken, progress=False)
    with pytest.raises(ConfigError, match="unknown \\['bleu'\\]"):
        evaluate(models[0], smol_tokenizer, CONVS, metrics=["bleu"], progress=False)
    with pytest.raises(DataError, match="conversation 1: conversation ends on a user turn"):
        evaluate(models[0], smol_tokenizer, [CONVS[0][:1]], progress=False)
    llava = write_jsonl(tmp_path / "llava.jsonl", [{"image": "cat.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}])
    with pytest.raises(DataError, match=r"llava.jsonl:1: field 'image': image file not found: .*cat.png"):
        evaluate(models[0], smol_tokenizer, llava, progress=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    with pytest.raises(ConfigError, match=r"llava.jsonl:1: images given but the model has no image branch"):
        evaluate(models[0], smol_tokenizer, llava, progress=False)
    assert main(["eval", str(varied_llama_dirs[0]), "--data", str(odd)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmtune: error: {odd}:1: cannot tell the data format")
    assert err.count("\n") == 1  # the data is checked before any model is loaded
