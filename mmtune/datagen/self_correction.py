"""``mmtune data selfcorrect``: self-correction training data from a model's own answers.

(The ``self_correction`` *format* and its marker strings live in ``mmtune.data.self_correction``;
this module builds rows of that format.)

For questions with gold answers: sample an answer from a local model, judge it
against the gold answer, and write one ``self_correction`` row per answer —
``correct: true`` when the judge accepts it, else ``correct: false`` with the
gold (or a worked solution column) as the revised answer. Training on these
rows with partial answer masking teaches the model to verify and revise its
own answers without imitating its wrong first attempts.

The job is resumable: rows are appended to the output batch by batch, and a
restart skips every (id, sample) already written. Batch ``b`` is sampled with
seed ``seed + b``, so with the same batch size an interrupted and resumed job
writes the same rows as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from mmtune.generation.options import GenerationOptions
from mmtune.config.schema import DEFAULT_MODEL
from mmtune.datagen.judges import Judge, resolve_judge
from mmtune.generation.continuation import complete_batch
from mmtune.errors import DataError


@dataclass
class QuestionFields:
    """Column names in the questions file."""

    id: str = "id"
    question: str = "question"
    answer: str = "answer"
    revision: str | None = None
    """Column with a worked solution used as the revised answer (default: the gold answer itself)."""


@dataclass
class BuildReport:
    questions: int = 0
    written: int = 0
    already_done: int = 0
    correct: int = 0
    incorrect: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.items()) or "none"
        return [f"questions {self.questions}; rows written {self.written} "
                f"({self.correct} correct, {self.incorrect} incorrect -> revised); "
                f"already done {self.already_done}; skipped: {skipped}"]


def read_questions(path: Path, fields: QuestionFields) -> list[dict]:
    """Rows with id, question, gold and revision; a bad row is an error naming file, line and field."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})", reason="malformed JSON") from None
            needed = [fields.question, fields.answer] + ([fields.revision] if fields.revision else [])
            for col in needed:
                if not isinstance(row.get(col), (str, int, float)) or not str(row[col]).strip():
                    raise DataError(f"{path}:{n}: field '{col}' is missing or empty", reason="missing field")
            rows.append({
                "id": str(row.get(fields.id, n)),
                "question": str(row[fields.question]),
                "gold": str(row[fields.answer]),
                "revision": str(row[fields.revision]) if fields.revision else str(row[fields.answer]),
            })
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: ids in field '{fields.id}' are not unique (resuming needs unique ids)",
                        reason="duplicate id")
    return rows


def done_keys(out: Path) -> set[tuple[str, int]]:
    """(id, sample) pairs already in ``out``; a torn last line (crash mid-write) is cut off."""
    if not out.is_file():
        return set()
    keys, good_bytes = set(), 0
    with open(out, "rb") as fh:
        for raw in fh:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                break
            if not raw.endswith(b"\n"):
                break
            keys.add((str(row["id"]), int(row["sample"])))
            good_bytes += len(raw)
    if good_bytes != out.stat().st_size:
        with open(out, "r+b") as fh:
            fh.truncate(good_bytes)
    return keys


def build_self_correction(
    questions: str | Path,
    out: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    judge: Judge | str = "numeric",
    fields: QuestionFields | None = None,
    system: str | None = None,
    samples_per_question: int = 1,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.95,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    loaded=None,
) -> BuildReport:
    """Sample, judge and append self-correction rows to ``out`` (see the module docstring).

    ``system`` is the instruction the answers are generated with; it is written
    into each row, so a recipe can erase it at training time (``prompt_erasure``).
    ``loaded`` is an already loaded ``(model, tokenizer)`` pair (skips loading ``model``).
    ``judge``: a ``(answer, gold) -> bool | None`` function, a built-in's name or ``module:function``.
    """
    judge = resolve_judge(judge) if isinstance(judge, str) else judge
    questions, out = Path(questions), Path(out)
    rows = read_questions(questions, fields or QuestionFields())[:limit]
    report = BuildReport(questions=len(rows))
    done = done_keys(out)
    items = [(row, k) for row in rows for k in range(samples_per_question)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    todo = [(b, [it for it in batch if (it[0]["id"], it[1]) not in done]) for b, batch in enumerate(batches)]
    report.already_done = sum(len(batch) for batch in batches) - sum(len(t) for _, t in todo)
    todo = [(b, t) for b, t in todo if t]
    if not todo:
        return report
    if loaded is None:
        from mmtune.models.run_outputs import load_for_inference

        loaded = load_for_inference(model)
    lm, tokenizer = loaded
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = [{"role": "system", "content": system}] if system else []
    with open(out, "a", encoding="utf-8") as fh, tqdm(
        total=sum(len(t) for _, t in todo), desc="self-correction data", unit=" answers", disable=not progress
    ) as bar:
        for b, batch in todo:
            prompts = [tokenizer.apply_chat_template([*prefix, {"role": "user", "content": row["question"]}],
                                                     add_generation_prompt=True, tokenize=False) for row, _ in batch]
            opts = GenerationOptions(max_new_tokens, temperature, top_p, seed + b)
            for (row, k), answer in zip(batch, complete_batch(lm, tokenizer, prompts, opts)):
                answer = answer.strip()
                if not answer:
                    report.skipped["empty answer"] = report.skipped.get("empty answer", 0) + 1
                    continue
                verdict = judge(answer, row["gold"])
                if verdict is None:
                    report.skipped["gold not judgeable"] = report.skipped.get("gold not judgeable", 0) + 1
                    continue
                ok = bool(verdict)
                record = {"id": row["id"], "sample": k, "question": row["question"], "initial_answer": answer,
                          "correct": ok, "gold": row["gold"]}
                if not ok:
                    record["revised_answer"] = row["revision"]
                if system:
                    record["system"] = system
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                report.written += 1
                report.correct += ok
                report.incorrect += not ok
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(batch))
    return report
