"""Judges, the self-correction data builder (resumable, seeded) and the self-verification scaffold."""

from __future__ import annotations

import json

import pytest

from conftest import write_jsonl
from mmtune.datagen import self_correction_eval
from mmtune.datagen.self_correction import QuestionFields, build_self_correction, done_keys
from mmtune.datagen.judges import resolve_judge
from mmtune.evaluation import exact_match, numeric_match
from mmtune.data.self_correction import NO, REVISED, VERIFICATION
from mmtune.errors import ConfigError, DataError

QUESTIONS = [{"id": f"q{i}", "question": f"What is {i} + {i}?", "answer": "ok" if i % 2 else "no",
              "solution": f"{i} + {i} = {2 * i}."} for i in range(5)]


def gold_is_ok(answer: str, gold: str) -> bool | None:
    """A judge whose verdict is known in advance: gold 'ok' is correct, 'no' wrong, anything else unjudgeable."""
    return {"ok": True, "no": False}.get(gold)


def test_builtin_judges_are_the_evaluation_judges():
    assert resolve_judge("numeric") is numeric_match and resolve_judge("exact") is exact_match
    assert numeric_match("3 + 4 = 7, so she has 7 apples.", "7") and not numeric_match("It is 8.", "7")


def test_judges_resolve_by_name_or_import_path():
    assert resolve_judge("test_selfcorrect:gold_is_ok") is gold_is_ok
    with pytest.raises(ConfigError, match="not one of"):
        resolve_judge("fuzzy")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_judge("nowhere_module:judge")


def build(tmp_path, tiny, out, **kw):
    q = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    kw.setdefault("batch_size", 2)
    return build_self_correction(q, out, loaded=tiny, judge=gold_is_ok, fields=QuestionFields(revision="solution"),
                                 max_new_tokens=6, seed=3, progress=False, **kw)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from mmtune.models.run_outputs import load_for_inference

    return load_for_inference(str(tiny_llama_dir))


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_builder_writes_correct_and_revised_rows(tmp_path, tiny):
    out = tmp_path / "sc.jsonl"
    report = build(tmp_path, tiny, out, system="Show your work.")
    rows = rows_of(out)
    written = {r["id"] for r in rows}
    assert report.written == len(rows) and report.written + sum(report.skipped.values()) == len(QUESTIONS)
    for r in rows:
        gold = next(q for q in QUESTIONS if q["id"] == r["id"])
        assert r["correct"] is (gold["answer"] == "ok") and r["system"] == "Show your work."
        assert r["initial_answer"].strip() and r["question"] == gold["question"]
        assert r.get("revised_answer") == (None if r["correct"] else gold["solution"])
    assert report.correct == sum(r["correct"] for r in rows) and written


def test_builder_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny):
    whole = tmp_path / "whole.jsonl"
    build(tmp_path, tiny, whole)
    parts = tmp_path / "parts.jsonl"
    first = build(tmp_path, tiny, parts, limit=4)  # "interrupted" after two whole batches
    with open(parts, "a") as fh:
        fh.write('{"id": "q4", "sam')  # a torn line from a crash mid-write
    again = build(tmp_path, tiny, parts)
    assert again.already_done == first.written and again.written == len(QUESTIONS) - first.written
    assert parts.read_text() == whole.read_text()
    assert build(tmp_path, tiny, parts).written == 0  # nothing left to do
    assert done_keys(parts) == {(q["id"], 0) for q in QUESTIONS}


def test_unjudgeable_gold_is_skipped_and_counted(tmp_path, tiny):
    q = write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[0], {**QUESTIONS[1], "answer": "???"}])
    report = build_self_correction(q, tmp_path / "o.jsonl", loaded=tiny, judge=gold_is_ok, max_new_tokens=4,
                                   progress=False)
    assert report.skipped.get("gold not judgeable") == 1 and report.written == 1


def test_bad_questions_file_names_line_and_field(tmp_path, tiny):
    q = write_jsonl(tmp_path / "q.jsonl", [QUESTIONS[0], {"id": "x", "question": "no gold"}])
    with pytest.raises(DataError, match=r"q.jsonl:2: field 'answer'"):
        build_self_correction(q, tmp_path / "o.jsonl", loaded=tiny, judge=gold_is_ok)
    q = write_jsonl(tmp_path / "d.jsonl", [QUESTIONS[0], QUESTIONS[0]])
    with pytest.raises(DataError, match="not unique"):
        build_self_correction(q, tmp_path / "o.jsonl", loaded=tiny, judge=gold_is_ok)


def test_cli_selfcorrect(tmp_path, tiny_llama_dir, capsys):
    from mmtune.cli import main

    q = write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)
    out = tmp_path / "sc.jsonl"
    code = main(["data", "selfcorrect", str(q), "--out", str(out), "--model", str(tiny_llama_dir),
                 "--judge", "test_selfcorrect:gold_is_ok", "--max-new-tokens", "4", "--batch-size", "4"])
    assert code == 0
    assert "rows written" in capsys.readouterr().out
    assert {r["id"] for r in rows_of(out)} <= {q["id"] for q in QUESTIONS} and rows_of(out)


def test_scaffold_prefills_verification_and_revision_and_scores(monkeypatch):
    """A scripted model: answers 8, says No when asked, revises to 7 when asked; and one that verifies by itself."""

    def scripted(model, tokenizer, prompts, opts):
        out = []
        for p in prompts:
            if p.endswith(REVISED):
                out.append(" The answer is 7.")
            elif p.endswith(VERIFICATION):
                out.append(f" {NO}")
            elif "self" in p:
                out.append(f"It is 7.\n\n{VERIFICATION} Yes.")
            else:
                out.append("It is 8.")
        return out

    class Tok:
        def apply_chat_template(self, messages, **kw):
            return messages[-1]["content"]

    monkeypatch.setattr(self_correction_eval, "complete_batch", scripted)
    rows = [{"id": 1, "question": "plain", "answer": "7"}, {"id": 2, "question": "self", "answer": "7"}]
    scores = self_correction_eval.evaluate_self_correction(None, Tok(), rows, numeric_match, progress=False)
    first, second = scores.attempts
    assert (first.initial, first.verdict, first.revised, first.unprompted) == ("It is 8.", False, "The answer is 7.", False)
    assert (second.verdict, second.unprompted, second.final_correct) == (True, True, True)
    assert scores.initial_accuracy == 0.5 and scores.final_accuracy == 1.0
    assert scores.verification_accuracy == 1.0 and scores.unprompted_verification == 0.5
    assert scores.says_no_when_wrong == 1.0 and scores.says_yes_when_right == 1.0
