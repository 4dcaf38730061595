"""``mmtune eval`` on an image model: VQA accuracy, multiple choice and CIDEr in the report, per-group figures,
short-answer defaults, batched decoding with images equal to one prompt at a time, bad rows as one line.

The model is a random open_clip ViT (32 px) + connector around a tiny random Llama whose greedy choices are well
separated, saved as a run output once per module; everything runs on CPU in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import open_clip_image_branch, write_json
from PIL import Image

from mmtune.cli import main
from mmtune.data.formats import FORMAT_DEFAULTS
from mmtune.errors import DataError
from mmtune.evaluation import CAPTION_MAX_NEW_TOKENS, SHORT_ANSWER_MAX_NEW_TOKENS, evaluate
from mmtune.generation.options import GenerationOptions

QUESTIONS = ["What colour is it?", "How many?", "Is there a dog in this picture, or is it a cat?", "Where?",
             "What is the object on the left side of the table made of?", "Why?"]
TYPES = ["colour", "count", "yes/no"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, varied_llama_dirs, one_torch_thread) -> Path:
    """A saved image model: the LLM as the base (frozen), encoder and connector weights in media.safetensors."""
    from mmtune.config.schema import MethodConfig, ModelConfig
    from mmtune.models.loading import load_causal_lm, load_tokenizer
    from mmtune.models.open import open_multimodal
    from mmtune.models.run_outputs import save_final

    base = ModelConfig(name=str(varied_llama_dirs[0]), media={"image": open_clip_image_branch().model_dump()})
    torch.manual_seed(0)
    model = open_multimodal(base.branches(), load_causal_lm(base, device_type="cpu"))
    out = tmp_path_factory.mktemp("image-run") / "final"
    save_final(out, model, load_tokenizer(base), base=base,
               method=MethodConfig(name="frozen", media={"image": {"encoder": {"trainable": "full"}}}))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six noise images of different sizes next to the data files."""
    root = tmp_path_factory.mktemp("eval-images")
    rng = np.random.default_rng(0)
    for i in range(len(QUESTIONS)):
        size = (24 + 8 * i, 40 - 3 * i)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"q{i}.png")
    return root


def _rows(answers: list[list[str]] | None = None, **extra) -> list[dict]:
    """LLaVA rows, one image and one question each; ``references`` (all human answers) on the row."""
    rows = []
    for i, question in enumerate(QUESTIONS):
        row = {"id": f"q{i}", "image": f"q{i}.png", "question_type": TYPES[i % 3], "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": "blue"}]}
        if answers is not None:
            row["references"] = answers[i]
        rows.append({**row, **{k: v[i] for k, v in extra.items()}})
    return rows


@pytest.fixture(scope="module")
def loaded(image_run):
    from mmtune.models.run_outputs import load_for_inference

    return load_for_inference(str(image_run))


def _predictions(loaded, data: Path, metrics: list[str], **kwargs) -> list[str]:
    model, tok = loaded
    report = evaluate(model, tok, data, metrics=metrics, on_bad_sample="skip", progress=False, **kwargs)
    return [r["prediction"] for r in report.records]


def test_batched_decoding_with_images_equals_one_prompt_at_a_time(loaded, folder):
    """Prompts of different lengths, each with its own image: left padding changes no answer."""
    model, tok = loaded
    data = write_json(folder / "plain.json", _rows())
    opts = GenerationOptions(max_new_tokens=12)
    one = evaluate(model, tok, data, metrics=["exact"], opts=opts, batch_size=1, progress=False)
    four = evaluate(model, tok, data, metrics=["exact"], opts=opts, batch_size=4, progress=False)
    predictions = [r["prediction"] for r in one.records]
    assert [r["prediction"] for r in four.records] == predictions
    assert len(set(predictions)) == len(QUESTIONS)  # the answers differ: the comparison means something
    same_image = write_json(folder / "same.json", [{**row, "image": "q0.png"} for row in _rows()])
    swapped = evaluate(model, tok, same_image, metrics=["exact"], opts=opts, batch_size=4, progress=False)
    assert [r["prediction"] for r in swapped.records][1:] != predictions[1:]  # and they depend on the image
    assert four.generation == {"max_new_tokens": 12, "temperature": 0.0, "top_p": 1.0, "seed": 0, "prompt": None,
                               "batch_size": 4}


def test_generate_gives_a_prompt_files_images_to_the_model_as_chat_does(image_run, loaded, folder, capsys):
    """``mmtune generate --prompts`` with an ``images`` field per row: batched replies equal one chat reply per
    prompt; a missing image is one line naming the file, row and field, before any model loads."""
    from mmtune.data.media import attach_media
    from mmtune.generation.chat import generate_reply

    model, tok = loaded
    rows = [{"id": f"q{i}", "prompt": question, "images": [f"q{i}.png"]} for i, question in enumerate(QUESTIONS[:4])]
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = folder / "generated.jsonl"
    assert main(["generate", "--model", str(image_run), "--prompts", str(prompts), "--out", str(out),
                 "--max-new-tokens", "8", "--batch-size", "3"]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    opts = GenerationOptions(max_new_tokens=8)
    chat = [generate_reply(model, tok, attach_media([{"role": "user", "content": row["prompt"]}],
                                                    [("image", str(folder / row["images"][0]))]), opts)
            for row in rows]
    assert [(r["id"], r["prompt"]) for r in got] == [(row["id"], row["prompt"]) for row in rows]
    assert [r["output"] for r in got] == chat and len(set(chat)) > 1  # they differ: the comparison means something

    rows[2]["images"] = ["gone.png"]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    capsys.readouterr()
    assert main(["generate", "--model", "no-such-model", "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"mmtune: error: {prompts}:3: field 'images': image file not found")
    assert "gone.png" in err


def test_eval_command_reports_vqa_accuracy_per_question_type(image_run, loaded, folder, capsys):
    prompt = "Question: {} Short answer:"
    preds = _predictions(loaded, write_json(folder / "plain.json", _rows()), ["vqa"], prompt=prompt)
    # human answers around the model's own answers: 3, 0, 10, 1, 2 and 4 of 10 annotators gave it
    agree = [3, 0, 10, 1, 2, 4]
    answers = [[p] * k + ["something else"] * (10 - k) for p, k in zip(preds, agree)]
    data = write_json(folder / "vqa.json", _rows(answers))
    out = folder / "report.json"
    assert main(["eval", str(image_run), "--data", str(data), "--metric", "vqa", "--prompt", prompt,
                 "--group-by", "question_type", "--batch-size", "4", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    records = report["records"]
    assert records[0]["prompt"] == "<image>\nQuestion: What colour is it? Short answer:"
    assert [r["prediction"] for r in records] == preds and records[0]["references"] == answers[0]
    # k of 10 agree: the k subsets without one of them hold k - 1, the 10 - k others k (each capped at 3 -> 1)
    want = [(k * min(1, (k - 1) / 3) + (10 - k) * min(1, k / 3)) / 10 for k in agree]
    assert want == pytest.approx([0.9, 0.0, 1.0, 0.3, 0.6, 1.0])
    assert [r["vqa"] for r in records] == pytest.approx(want)
    vqa = report["metrics"]["vqa"]
    assert vqa["accuracy"] == pytest.approx(sum(want) / 6) and vqa["count"] == 6
    # rows 0 and 3 are colour, 1 and 4 count, 2 and 5 yes/no
    assert vqa["by_group"] == {"colour": {"accuracy": pytest.approx(0.6), "count": 2},
                               "count": {"accuracy": pytest.approx(0.3), "count": 2},
                               "yes/no": {"accuracy": pytest.approx(1.0), "count": 2}}
    assert report["group_by"] == "question_type" and [r["group"] for r in records[:3]] == TYPES[:3]
    assert report["generation"]["max_new_tokens"] == SHORT_ANSWER_MAX_NEW_TOKENS == 10
    assert report["generation"]["prompt"] == prompt
    assert "VQA accuracy 0.633 (6 scored)" in capsys.readouterr().err


def test_multiple_choice_and_cider_on_an_image_model(loaded, folder):
    model, tok = loaded
    plain = write_json(folder / "plain.json", _rows())
    # multiple choice: the model's short answer is choice B of even rows; odd rows offer two other answers
    short = _predictions(loaded, plain, ["choice"])
    choices = [["zzz one", p, "zzz two"] if i % 2 == 0 else ["qqq one", "qqq two"] for i, p in enumerate(short)]
    rows = _rows(choices=choices, correct_choice=[1, 0, 1, 0, 1, 0])
    mc = evaluate(model, tok, write_json(folder / "mc.json", rows), metrics=["choice"], group_by="question_type",
                  progress=False)
    assert [r["picked"] for r in mc.records] == ["B", None, "B", None, "B", None]
    assert [r["gold_choice"] for r in mc.records] == ["B", "A"] * 3
    assert mc.metrics["choice"] == {"accuracy": 0.5, "correct": 3, "count": 6, "unmatched": 3, "by_group": {
        "colour": {"accuracy": 0.5, "correct": 1, "count": 2, "unmatched": 1},
        "count": {"accuracy": 0.5, "correct": 1, "count": 2, "unmatched": 1},
        "yes/no": {"accuracy": 0.5, "correct": 1, "count": 2, "unmatched": 1}}}

    # captions: a caption equal to both references of its image scores CIDEr-D's maximum, 10 (every n-gram
    # order's cosine is 1, no length penalty); captions with unrelated references score 0
    long = _predictions(loaded, plain, ["cider"])
    assert len(set(long)) == 6 and all(len(p.split()) >= 4 for p in long)
    refs = [[p, p] if i < 3 else ["a completely unrelated sentence about trains", "green trains at a station"]
            for i, p in enumerate(long)]
    caps = evaluate(model, tok, write_json(folder / "caps.json", _rows(refs)), metrics=["cider"], progress=False)
    assert [r["prediction"] for r in caps.records] == long
    assert [r["cider"] for r in caps.records] == pytest.approx([10, 10, 10, 0, 0, 0])
    assert caps.metrics["cider"] == {"cider": pytest.approx(5.0), "count": 6}
    assert caps.generation["max_new_tokens"] == CAPTION_MAX_NEW_TOKENS


def test_rows_without_references_are_one_line_or_a_counted_skip(image_run, loaded, folder, capsys):
    model, tok = loaded
    rows = _rows([["blue"] * 10 for _ in QUESTIONS])
    del rows[2]["references"]
    data = write_json(folder / "holes.json", rows)
    assert main(["eval", str(image_run), "--data", str(data), "--metric", "vqa"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmtune: error: {data}: row 3: no 'references'") and err.count("\n") == 1
    with pytest.raises(DataError, match=r"row 3: no 'references'"):
        evaluate(model, tok, data, metrics=["vqa"], progress=False)
    rows[4]["references"] = "blue"  # a string, not a list
    data = write_json(folder / "holes.json", rows)
    only_bad = write_json(folder / "bad.json", [r for i, r in enumerate(rows) if i != 2])
    assert main(["eval", str(image_run), "--data", str(only_bad), "--metric", "vqa"]) == 2
    assert capsys.readouterr().err == (f"mmtune: error: {only_bad}: row 4: field 'references': expected a list of "
                                       "at least 1 string(s), got str\n")
    out = folder / "skipped.json"
    assert main(["eval", str(image_run), "--data", str(data), "--metric", "vqa", "--metric", "exact",
                 "--on-bad-sample", "skip", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    vqa = report["metrics"]["vqa"]
    assert vqa["count"] == 4 and vqa["skipped"] == {"no references": 1, "bad references": 1}
    assert vqa["first_skipped"] == {"no references": f"{data}: row 3", "bad references": f"{data}: row 5"}
    assert report["metrics"]["exact"]["count"] == 6  # the rows stay in the other metrics
    assert [r["vqa"] is None for r in report["records"]] == [False, False, True, False, True, False]
    assert f"1 left out of vqa (no references; first: {data}: row 3)" in capsys.readouterr().err


@pytest.mark.skipif("vqa" not in FORMAT_DEFAULTS, reason="the vqa data format is not there")
def test_vqa_format_rows_give_their_references_question_and_type(image_run, folder):
    """Rows of the ``vqa`` task format: references on the answer message, the bare question for --prompt."""
    rows = [{"question_id": i, "image": f"q{i}.png", "question": q, "answer": ["two", "2", "Two", "3"],
             "question_type": TYPES[i % 3]} for i, q in enumerate(QUESTIONS[:3])]
    data = folder / "vqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = folder / "vqa-format.json"
    assert main(["eval", str(image_run), "--data", str(data), "--metric", "vqa", "--group-by", "question_type",
                 "--prompt", "Question: {} Short answer:", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["prompt"] for r in report["records"]] == [f"<image>\nQuestion: {q} Short answer:" for q in QUESTIONS[:3]]
    assert report["records"][0]["references"] == ["two", "2", "Two", "3"]
    assert set(report["metrics"]["vqa"]["by_group"]) == set(TYPES[:3]) and report["metrics"]["vqa"]["count"] == 3
