"""Evaluate a model (text or multimodal, or a proxy-tuned combination) on held-out conversations.

Metrics: exact match, numeric accuracy, loss; for image benchmarks VQA
accuracy, multiple-choice accuracy and CIDEr-D (``mmtune.eval_metrics``).

Why these: exact match and numeric accuracy judge what the model
*generates* for the last user turn against the gold answer (after a light
text normalisation, or on the number it states); the loss judges how likely the
model finds the gold answers, computed exactly like training's validation loss
(same template rendering, same answer-only mask via ``split_segments`` /
``encode_segments``), averaged over answer tokens. ``vqa`` scores the answer
against all human answers of the row (``references``: the VQAv2 rule),
``choice`` matches it to one of the row's ``choices`` (ScienceQA-style),
``cider`` scores a caption against the row's ``references`` (or its gold answer).
Data is read by the same readers as training, so any supported format (alpaca,
sharegpt, openai, dolly, oasst, llava with its images) or a dataset card works; a multimodal model
answers from the media of each conversation through the same batched decoding loop as
chat. The judges are plain functions, importable on
their own for other tools (e.g. building self-correction data).

Where ``references`` / ``choices`` come from: the last turn's messages (formats that carry them put them on
the answer message), else the row itself (a top-level key, or the last message of its message list), so
LLaVA rows with added keys work too. ``group_by`` breaks every figure down by a row key (e.g. a question type).
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmtune.config.schema import DataConfig
from mmtune.data.formats import FORMAT_DEFAULTS, Conversation
from mmtune.errors import ConfigError, DataError
from mmtune.generation.options import BATCH_SIZE, GenerationOptions

METRICS = ("exact", "numeric", "loss", "vqa", "choice", "cider")
DEFAULT_METRICS = ("exact", "numeric", "loss")
GENERATED = ("exact", "numeric", "vqa", "choice", "cider")
"""The metrics that judge a generated answer (``loss`` judges the gold one)."""
SHORT_ANSWER_MAX_NEW_TOKENS = 10
"""Answer length for ``vqa`` / ``choice``: LAVIS's InstructBLIP VQA evaluation configs
(``lavis/projects/instructblip/qa_okvqa_*_eval.yaml``; BLIP-2's ``blip2/eval/vqav2_zeroshot_*_eval.yaml``) decode with
``max_len: 10, min_len: 1, num_beams: 5`` and the prompt ``"Question: {} Short answer:"``."""
CAPTION_MAX_NEW_TOKENS = 80
"""Caption length for ``cider``: LAVIS's InstructBLIP caption evaluation configs
(``lavis/projects/instructblip/caption_coco_*_eval_test.yaml``, ``caption_nocaps_out_domain_*_eval.yaml``) decode
with ``max_len: 80, min_len: 10, num_beams: 5`` and the prompt ``"A short image caption."`` (BLIP-2's COCO
caption configs used ``max_len: 30, min_len: 8``). mmtune decodes greedily and has no minimum length."""
_DEFAULT_MAX_LENGTH = DataConfig.model_fields["max_length"].default
"""The loss is computed like training's: at ``data.max_length``'s default unless told."""

# --------------------------------------------------------------------------- judges

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def extract_number(text: str, which: str = "last") -> float | None:
    """The first or last number written in ``text`` (``1,234.5`` counts as one number), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    return float((found[0] if which == "first" else found[-1]).replace(",", ""))


def numeric_match(prediction: str, gold: str, *, which: str = "last", tolerance: float = 1e-6) -> bool | None:
    """Whether the numbers agree within ``tolerance`` (relative to the gold's size, at least absolute).

    None when the gold answer states no number: such a sample cannot be judged
    numerically and is counted apart instead of as wrong.
    """
    want = extract_number(gold, which)
    if want is None:
        return None
    got = extract_number(prediction, which)
    return got is not None and abs(got - want) <= tolerance * max(1.0, abs(want))


JUDGES: dict[str, Callable[[str, str], bool | None]] = {"exact": exact_match, "numeric": numeric_match}


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metrics asked for, once each, in order; an unknown name is a config error."""
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"metrics: unknown {unknown or 'none given'}; choose from {', '.join(METRICS)}")
    return metrics


def default_max_new_tokens(metrics: Sequence[str]) -> int:
    """The answer length a metric set is generated with unless told: a caption's for ``cider``, a short answer's
    for ``vqa`` / ``choice`` (see the constants above), else ``GenerationOptions``'s."""
    if "cider" in metrics:
        return CAPTION_MAX_NEW_TOKENS
    if "vqa" in metrics or "choice" in metrics:
        return SHORT_ANSWER_MAX_NEW_TOKENS
    return GenerationOptions().max_new_tokens


def check_prompt(template: str | None) -> None:
    if template is not None and template.count("{}") > 1:
        raise ConfigError(f"prompt: {template!r} has {template.count('{}')} '{{}}' placeholders; use one (the "
                          "question goes there) or none (the prompt replaces the question)")


def with_prompt(conversation: Conversation, template: str | None, question: str | None = None) -> Conversation:
    """``conversation`` with its last user turn rewritten by ``template``: ``{}`` stands for ``question`` (default:
    the turn's text, media tags removed), a template without ``{}`` replaces it; the turn's media tags go first,
    on their own line.

    ``"Question: {} Short answer:"`` on ``"<image>\\nWhat colour is the bus?"`` gives
    ``"<image>\\nQuestion: What colour is the bus? Short answer:"``.
    """
    if template is None:
        return conversation
    from mmtune.data.media import strip_tags
    from mmtune.modalities import MODALITIES

    check_prompt(template)
    k = max(i for i, m in enumerate(conversation) if m["role"] == "user")
    turn = conversation[k]
    question = strip_tags(turn["content"]) if question is None else question
    text = template.replace("{}", question) if "{}" in template else template
    tags = "".join(MODALITIES[e["modality"]].tag for e in turn.get("media", ()) if e["modality"] in MODALITIES)
    return [*conversation[:k], {**turn, "content": f"{tags}\n{text}" if tags else text}, *conversation[k + 1:]]

# --------------------------------------------------------------------------- data


@dataclass
class EvalReport:
    """What ``mmtune eval`` writes as JSON: per-metric figures, counts, and optionally per-sample records.

    With ``group_by``, every metric also holds ``by_group``: the same figures per value of that row key.
    ``generation``: how the answers were generated (absent when only the loss was asked for).
    """

    model: str
    data: str
    samples: int
    metrics: dict[str, dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] | None = None
    generation: dict[str, Any] | None = None
    group_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("records", "generation", "group_by"):
            if out[key] is None:
                out.pop(key)
        return out

    def write(self, path: Path) -> Path:
        from mmtune.utils.atomic import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def summary(self) -> str:
        def figure(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        parts = [f"{self.samples} samples"]
        m = self.metrics
        if "exact" in m:
            parts.append(f"exact match {m['exact']['accuracy']:.3f} ({m['exact']['correct']}/{m['exact']['count']})")
        if "numeric" in m:
            parts.append(f"numeric accuracy {figure(m['numeric']['accuracy'])} "
                         f"({m['numeric']['correct']}/{m['numeric']['count']})")
        if "vqa" in m:
            parts.append(f"VQA accuracy {figure(m['vqa']['accuracy'])} ({m['vqa']['count']} scored)")
        if "choice" in m:
            c = m["choice"]
            parts.append(f"multiple-choice accuracy {figure(c['accuracy'])} ({c['correct']}/{c['count']}, "
                         f"{c['unmatched']} answers matched no choice)")
        if "cider" in m:
            parts.append(f"CIDEr {figure(m['cider']['cider'])} ({m['cider']['count']} scored)")
        if "loss" in m:
            parts.append(f"loss {m['loss']['loss']:.4f} (ppl {m['loss']['perplexity']:.2f}, {m['loss']['tokens']} tokens)")
        for name, figures in m.items():
            for reason, count in figures.get("skipped", {}).items():
                parts.append(f"{count} left out of {name} ({reason}; first: {figures['first_skipped'][reason]})")
        return "; ".join(parts)


def _detect_format(path: Path) -> str:
    """The format of a local file, from the keys of its first row."""
    from mmtune.config.schema import DataSource
    from mmtune.data.sources import MalformedRow, ResolvedSource, iter_rows

    for where, row in iter_rows(ResolvedSource(str(path), DataSource(path=str(path)))):
        if isinstance(row, MalformedRow):
            raise DataError(f"{where}: {row.detail}", reason="malformed JSON")
        keys = set(row)
        if "conversations" in keys:
            return "llava" if "image" in keys else "sharegpt"
        if "messages" in keys:
            return "openai"
        if {"instruction", "output"} <= keys:
            return "alpaca"
        if {"instruction", "response"} <= keys:
            return "dolly"
        if "parent_id" in keys or "prompt" in keys:
            return "oasst"
        if "image" in keys and "vqa" in FORMAT_DEFAULTS and {"question", "answer"} <= keys:
            return "vqa"
        if "image" in keys and "caption" in FORMAT_DEFAULTS and "caption" in keys:
            return "caption"
        raise DataError(f"{where}: cannot tell the data format from the fields {sorted(keys)}; "
                        "name it with --format (alpaca, sharegpt, openai, dolly, oasst, llava, vqa, caption)",
                        reason="unknown format")
    raise DataError(f"{path}: no rows", reason="empty dataset")


@dataclass
class EvalData:
    """Held-out conversations (each ending with the gold answer), where each came from, and what was skipped."""

    name: str
    conversations: list[tuple[str, Conversation]]
    skipped: dict[str, int] = field(default_factory=dict)
    fields: list[dict[str, Any]] = field(default_factory=list)
    """Per conversation, what its row holds besides the conversation: the top-level scalar fields (for
    ``group_by``) and ``references`` / ``choices`` (top level or on the row's last message); empty when unknown."""

    questions: list[str | None] = field(default_factory=list)
    """Per conversation, the bare question when the format keeps it apart from the instruction around it
    (``vqa``: its question column); what ``prompt`` templates fill in."""

    def fields_of(self, i: int) -> dict[str, Any]:
        return self.fields[i] if i < len(self.fields) else {}

    def question_of(self, i: int) -> str | None:
        return self.questions[i] if i < len(self.questions) else None


def load_eval_data(data: str | Path, *, data_format: str = "auto", max_samples: int | None = None,
                   on_bad_sample: str = "error") -> EvalData:
    """Conversations from a file (any training format, detected from its first row) or a dataset card name.

    A ``caption`` dataset gives one sample per image (its first; training draws one per caption), scored
    against all the image's captions; the others are counted in ``skipped``.
    """
    from mmtune.config.schema import DatasetSpec
    from mmtune.data.pipeline import SourceReport, conversations_of
    from mmtune.data.sources import resolve_source

    path = Path(data).expanduser()
    if path.suffix.lower() in (".json", ".jsonl", ".parquet"):
        if not path.is_file():
            raise DataError(f"{path}: data file not found", reason="missing file")
        fmt = _detect_format(path) if data_format == "auto" else data_format
        try:
            spec = DatasetSpec(path=str(path), format=fmt)
        except ValueError as exc:
            raise ConfigError(f"--format: {exc}") from None
    else:
        spec = DatasetSpec(card=str(data), **({} if data_format == "auto" else {"format": data_format}))
    from mmtune.data.formats import BadRow
    from mmtune.data.media import with_resolved_media

    report = SourceReport(str(data))
    source = resolve_source(spec)
    convs = []
    images_seen: set[tuple[str, ...]] = set()
    for where, conv in conversations_of(source, report, on_bad_sample):
        if source.format == "caption":
            image = tuple(str(e.get("ref")) for m in conv for e in m.get("media", ()))
            if image in images_seen:
                report.skip("caption of an image already evaluated", where)
                continue
            images_seen.add(image)
        if any(m.get("media") for m in conv):
            try:
                conv = with_resolved_media(conv, source.media_root())
            except BadRow as exc:
                if on_bad_sample == "error":
                    raise DataError(f"{where}: field '{exc.field_name}': {exc.detail}", reason=exc.reason) from None
                report.skip(exc.reason, where)
                continue
        convs.append((where, conv))
        if max_samples is not None and len(convs) >= max_samples:
            break
    if not convs:
        raise DataError(f"{data}: no usable conversation", reason="empty dataset")
    fields = _row_fields(source, {where for where, _ in convs}) if source.format != "oasst" else {}
    kept = [fields.get(where, ({}, None)) for where, _ in convs]
    return EvalData(str(data), convs, dict(report.skipped), [f for f, _ in kept], [q for _, q in kept])


ROW_TARGETS = ("references", "choices", "correct_choice")
"""Keys read from a row for the benchmark judges (besides its scalar fields)."""


def _row_fields(source, wheres: set[str]) -> dict[str, tuple[dict[str, Any], str | None]]:
    """The kept rows' scalar fields and targets, and their bare question (a second, cheap pass over the rows:
    converters keep only the conversation)."""
    from mmtune.data.formats import Mapping
    from mmtune.data.sources import iter_rows

    columns = Mapping.for_format(source.format, source.settings.columns, source.settings.roles).columns
    messages_col = columns.get("messages")
    question_col = columns.get("question") if source.format == "vqa" else None
    found: dict[str, tuple[dict[str, Any], str | None]] = {}
    for where, row in iter_rows(source):
        if where not in wheres or not isinstance(row, dict):
            continue
        out = {k: v for k, v in row.items() if v is None or isinstance(v, (str, int, float, bool))}
        messages = row.get(messages_col) if messages_col else None
        last = messages[-1] if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else {}
        for key in ROW_TARGETS:
            if key in row:
                out[key] = row[key]
            elif key in last:
                out[key] = last[key]
        question = row.get(question_col) if question_col else None
        found[where] = (out, question if isinstance(question, str) else None)
        if len(found) == len(wheres):
            break
    return found


def eval_data_of(conversations: Sequence[Conversation], max_samples: int | None = None) -> EvalData:
    """Wrap in-memory conversations, checked like file rows (alternating turns, ending on the gold answer)."""
    from mmtune.data.formats import BadRow, check_conversation

    located = []
    for i, conv in enumerate(list(conversations)[:max_samples]):
        try:
            located.append((f"conversation {i + 1}", check_conversation(list(conv), "conversation")))
        except BadRow as exc:
            raise DataError(f"conversation {i + 1}: {exc.detail}", reason=exc.reason) from None
    return EvalData(f"{len(located)} conversations", located)


# --------------------------------------------------------------------------- loss


def answer_loss(model_or_source, tokenizer, conversations: Sequence[Conversation], *, max_length: int | None = None,
                batch_size: int = BATCH_SIZE, progress: bool = True,
                wheres: Sequence[str] | None = None) -> tuple[list[float], list[int], int]:
    """Per conversation: summed negative log-likelihood of the answer tokens and their count; plus #truncated.

    The mask is training's: every assistant turn (with its end-of-turn token)
    is a target, prompts are not; media tags expand as in training.
    """
    from mmtune.data.formats import BadRow
    from mmtune.data.media import media_items_of, media_slots, media_tags
    from mmtune.data.templates import split_segments
    from mmtune.data.tokenize import encode_segments
    from mmtune.generation.decoding import as_source, device_of, left_pad, pad_id_of, sequence_logits, the_model
    from mmtune.generation.prompts import check_text_only, media_inputs, model_media_specs

    source = as_source(model_or_source)
    model = the_model(source)
    if model is None:
        check_text_only(conversations)
    specs = model_media_specs(model, tokenizer) if model is not None else {}
    wheres = wheres or [f"conversation {i + 1}" for i in range(len(conversations))]
    items = []
    for conv, where in zip(conversations, wheres):
        try:
            items.append(media_items_of(conv, specs, root=None, where=where, owner=where))
        except BadRow as exc:
            raise DataError(f"{where}: field '{exc.field_name}': {exc.detail}", reason=exc.reason) from None
    encoded = encode_segments(tokenizer, [split_segments(tokenizer, c) for c in conversations],
                              max_length=max_length or _DEFAULT_MAX_LENGTH, media=[media_slots(it, specs) for it in items],
                              tags=media_tags(specs))
    device = device_of(source)
    sums, counts = [0.0] * len(encoded), [0] * len(encoded)
    with tqdm(total=len(encoded), desc="eval loss", unit=" samples", disable=not progress or None) as bar:
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start:start + batch_size]
            ids, mask = left_pad([e.input_ids.tolist() for e in chunk], pad_id_of(tokenizer))
            trained, _ = left_pad([e.trained.astype(np.int64).tolist() for e in chunk], 0)
            ids, mask, trained = ids.to(device), mask.to(device), trained.to(device).bool()
            kept = [item for k, e in enumerate(chunk) for item in items[start + k][: e.media_kept]]
            logits = sequence_logits(source, ids, mask, media_inputs(model, tokenizer, kept, device))
            # the token at t is predicted at t - 1; the first token is never a target (media positions neither:
            # their placeholder ids are clamped to a valid class and masked out)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].clamp(min=0),
                                                    reduction="none")
            target = trained[:, 1:] & mask[:, 1:].bool()
            for k in range(len(chunk)):
                sums[start + k] = float(nll[k][target[k]].sum())
                counts[start + k] = int(target[k].sum())
            bar.update(len(chunk))
    return sums, counts, sum(int(e.truncated) for e in encoded)


# --------------------------------------------------------------------------- targets


NO_GROUP = "(none)"
"""The group of a row without the ``group_by`` key."""


class _BadTarget(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _last_turn_value(conv: Conversation, fields: dict[str, Any], key: str) -> Any:
    """``key`` on the last user or answer message (where formats put it), else in the row's fields."""
    for msg in reversed(conv[-2:]):
        if key in msg:
            return msg[key]
    return fields.get(key)


def _strings(value: Any, key: str, at_least: int) -> list[str]:
    if not (isinstance(value, list) and len(value) >= at_least and all(isinstance(v, str) for v in value)):
        got = f"{type(value).__name__} of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise _BadTarget(f"bad {key}", f"field '{key}': expected a list of at least {at_least} string(s), got {got}")
    return value


@dataclass
class SampleTargets:
    """What the benchmark judges compare each sample's answer with (None: the sample is not scored by it)."""

    answers: list[list[str] | None]
    """``vqa``: the human answers (``references``)."""
    captions: list[list[str] | None]
    """``cider``: the reference captions (``references``; the gold answer when the row has none)."""
    choices: list[list[str] | None]
    gold_choice: list[int | None]
    groups: list[str] | None
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per metric: samples left out of it, per reason (``on_bad_sample="skip"``)."""
    first_skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per metric and reason: where the first left-out sample is."""


def sample_targets(data: EvalData, metrics: Sequence[str], *, group_by: str | None = None,
                   on_bad_sample: str = "error") -> SampleTargets:
    """Each sample's ``references``, ``choices`` and group, checked for the metrics asked for.

    A sample that lacks what a metric needs (or holds it in the wrong shape) is
    one :class:`DataError` naming its file and row, or, with
    ``on_bad_sample="skip"``, left out of that metric and counted.
    """
    from mmtune.eval_metrics import match_choice

    if on_bad_sample not in ("error", "skip"):
        raise ConfigError(f"on_bad_sample: '{on_bad_sample}' is not 'error' or 'skip'")
    n = len(data.conversations)
    out = SampleTargets([None] * n, [None] * n, [None] * n, [None] * n, [] if group_by else None)

    def bad(metric: str, where: str, reason: str, detail: str) -> None:
        if on_bad_sample == "error":
            raise DataError(f"{where}: {detail}", reason=reason)
        counts = out.skipped.setdefault(metric, {})
        counts[reason] = counts.get(reason, 0) + 1
        out.first_skipped.setdefault(metric, {}).setdefault(reason, where)

    for i, (where, conv) in enumerate(data.conversations):
        fields = data.fields_of(i)
        if group_by:
            value = fields.get(group_by, _last_turn_value(conv, {}, group_by))
            out.groups.append(NO_GROUP if value is None else value if isinstance(value, str) else json.dumps(value))
        if "vqa" in metrics or "cider" in metrics:
            value = _last_turn_value(conv, fields, "references")
            if value is None:
                if "vqa" in metrics:
                    bad("vqa", where, "no references",
                        "no 'references' (the human answers, a list of strings) on the row or its answer message: "
                        "the vqa metric needs them (or leave such rows out: --on-bad-sample skip)")
                if "cider" in metrics:
                    out.captions[i] = [conv[-1]["content"]]  # a caption row with one caption: the gold answer
            else:
                try:
                    out.answers[i] = out.captions[i] = _strings(value, "references", 1)
                except _BadTarget as exc:
                    for metric in ("vqa", "cider"):
                        if metric in metrics:
                            bad(metric, where, exc.reason, exc.detail)
        if "choice" in metrics:
            try:
                value = _last_turn_value(conv, fields, "choices")
                if value is None:
                    raise _BadTarget("no choices", "no 'choices' (a list of strings) on the row or its messages: "
                                                   "the choice metric needs them (or leave such rows out: "
                                                   "--on-bad-sample skip)")
                choices = _strings(value, "choices", 2)
                if len(choices) > 26:
                    raise _BadTarget("bad choices", f"field 'choices': {len(choices)} choices; at most 26 (A-Z)")
                correct = _last_turn_value(conv, fields, "correct_choice")
                if correct is not None:
                    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct < len(choices):
                        raise _BadTarget("bad correct_choice", f"field 'correct_choice': expected an index into "
                                                               f"'choices' (0 to {len(choices) - 1}), got {correct!r}")
                    gold = correct
                else:
                    gold = match_choice(conv[-1]["content"], choices)
                if gold is None:
                    raise _BadTarget("gold answer not among the choices",
                                     f"the gold answer {conv[-1]['content']!r} names none of the choices {choices}")
            except _BadTarget as exc:
                bad("choice", where, exc.reason, exc.detail)
            else:
                out.choices[i], out.gold_choice[i] = choices, gold
    if out.groups is not None and all(g == NO_GROUP for g in out.groups):
        raise DataError(f"{data.name}: no row has the key '{group_by}' to group by", reason="missing field")
    return out


# --------------------------------------------------------------------------- figures


def _exact_figures(recs: list[dict]) -> dict[str, Any]:
    hits = [r["exact"] for r in recs]
    return {"accuracy": sum(hits) / len(hits) if hits else None, "correct": sum(hits), "count": len(hits)}


def _numeric_figures(recs: list[dict]) -> dict[str, Any]:
    judged = [r["numeric"] for r in recs]
    scored = [h for h in judged if h is not None]
    return {"accuracy": sum(scored) / len(scored) if scored else None, "correct": sum(scored),
            "count": len(scored), "no_gold_number": len(judged) - len(scored)}


def _vqa_figures(recs: list[dict]) -> dict[str, Any]:
    scored = [r["vqa"] for r in recs if r.get("vqa") is not None]
    return {"accuracy": sum(scored) / len(scored) if scored else None, "count": len(scored)}


def _choice_figures(recs: list[dict]) -> dict[str, Any]:
    judged = [r for r in recs if r.get("choice") is not None]
    correct = sum(r["choice"] for r in judged)
    return {"accuracy": correct / len(judged) if judged else None, "correct": correct, "count": len(judged),
            "unmatched": sum(r["picked"] is None for r in judged)}


def _cider_figures(recs: list[dict]) -> dict[str, Any]:
    scored = [r["cider"] for r in recs if r.get("cider") is not None]
    return {"cider": sum(scored) / len(scored) if scored else None, "count": len(scored)}


def _loss_figures(sums: list[float], counts: list[int]) -> dict[str, Any]:
    tokens = sum(counts)
    mean = sum(sums) / tokens if tokens else float("nan")
    return {"loss": mean, "perplexity": math.exp(mean) if tokens else float("nan"), "tokens": tokens}


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model_or_source,
    tokenizer,
    data: str | Path | EvalData | Sequence[Conversation],
    metrics: Sequence[str] = DEFAULT_METRICS,
    opts: GenerationOptions | None = None,
    *,
    data_format: str = "auto",
    max_samples: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_length: int | None = None,
    number: str = "last",
    tolerance: float = 1e-6,
    prompt: str | None = None,
    group_by: str | None = None,
    on_bad_sample: str = "error",
    records: bool = True,
    progress: bool = True,
    model_name: str = "",
) -> EvalReport:
    """Evaluate on held-out data: a file / card name, :class:`EvalData`, or conversations ending with the gold answer.

    ``model_or_source`` is a causal LM or a :class:`mmtune.generation.proxy.ProxyTuned`.
    Generation (for every metric but ``loss``) answers the last user turn with
    the history before it, batched (``batch_size`` prompts, media included) and
    seeded by ``opts`` (default greedy, ``default_max_new_tokens(metrics)`` tokens).
    ``prompt``: a template for the last user turn (``"Question: {} Short answer:"``;
    see :func:`with_prompt`), used for the loss too; default: the data's own.
    ``max_length``: token limit of the loss (default: ``data.max_length``'s).
    ``group_by``: a row key; every figure is also given per value of it.
    ``on_bad_sample``: ``"skip"`` leaves rows that lack what a metric needs out of that metric (counted)
    instead of stopping with an error naming the row.
    """
    from mmtune.eval_metrics import choice_letter, cider_d, match_choice, vqa_accuracy

    metrics = check_metrics(metrics)
    if number not in ("first", "last"):
        raise ConfigError(f"number: '{number}' is not 'first' or 'last'")
    check_prompt(prompt)
    opts = opts or GenerationOptions(max_new_tokens=default_max_new_tokens(metrics))
    if isinstance(data, (str, Path)):
        data = load_eval_data(data, data_format=data_format, max_samples=max_samples, on_bad_sample=on_bad_sample)
    elif not isinstance(data, EvalData):
        data = eval_data_of(data, max_samples)
    targets = sample_targets(data, metrics, group_by=group_by, on_bad_sample=on_bad_sample)
    located = data.conversations
    wheres = [where for where, _ in located]
    convs = [with_prompt(c, prompt, data.question_of(i)) for i, (_, c) in enumerate(located)]
    recs: list[dict[str, Any]] = [
        {"where": where, "prompt": conv[-2]["content"], "gold": conv[-1]["content"]} for where, conv in zip(wheres, convs)
    ]
    for i, rec in enumerate(recs):
        if targets.groups is not None:
            rec["group"] = targets.groups[i]
        if "vqa" in metrics or "cider" in metrics:
            rec["references"] = targets.answers[i] if targets.answers[i] is not None else targets.captions[i]
        if targets.choices[i] is not None:
            rec["choices"] = targets.choices[i]
            rec["gold_choice"] = choice_letter(targets.gold_choice[i])
    results: dict[str, dict[str, Any]] = {}
    generated = [m for m in metrics if m in GENERATED]
    if generated:
        from mmtune.generation.decoding import generate_texts

        preds = generate_texts(model_or_source, tokenizer, [c[:-1] for c in convs], opts,
                               batch_size=batch_size, progress=progress, desc="eval generation", wheres=wheres)
        for rec, pred in zip(recs, preds):
            rec["prediction"] = pred
        if "exact" in metrics:
            for rec in recs:
                rec["exact"] = exact_match(rec["prediction"], rec["gold"])
        if "numeric" in metrics:
            for rec in recs:
                rec["numeric"] = numeric_match(rec["prediction"], rec["gold"], which=number, tolerance=tolerance)
        if "vqa" in metrics:
            for rec, answers in zip(recs, targets.answers):
                rec["vqa"] = None if answers is None else vqa_accuracy(rec["prediction"], answers)
        if "choice" in metrics:
            for rec, choices, gold in zip(recs, targets.choices, targets.gold_choice):
                picked = None if choices is None else match_choice(rec["prediction"], choices)
                rec["picked"] = None if picked is None else choice_letter(picked)
                rec["choice"] = None if choices is None else picked == gold
        if "cider" in metrics:
            scored = [i for i, refs in enumerate(targets.captions) if refs is not None]
            _, scores = cider_d([preds[i] for i in scored], [targets.captions[i] for i in scored])
            for i, score in zip(scored, scores):
                recs[i]["cider"] = score
    figures = {"exact": _exact_figures, "numeric": _numeric_figures, "vqa": _vqa_figures, "choice": _choice_figures,
               "cider": _cider_figures}
    for metric in generated:
        results[metric] = figures[metric](recs)
    if "numeric" in metrics:
        results["numeric"].update(number=number, tolerance=tolerance)
    sums: list[float] = []
    counts: list[int] = []
    if "loss" in metrics:
        sums, counts, truncated = answer_loss(model_or_source, tokenizer, convs, max_length=max_length,
                                              batch_size=batch_size, progress=progress, wheres=wheres)
        for rec, s, n in zip(recs, sums, counts):
            rec["loss"], rec["answer_tokens"] = (s / n if n else None), n
        results["loss"] = {**_loss_figures(sums, counts), "truncated": truncated,
                           "max_length": max_length or _DEFAULT_MAX_LENGTH}
    for metric, reasons in targets.skipped.items():
        results[metric].update(skipped=reasons, first_skipped=targets.first_skipped[metric])
    if targets.groups is not None:
        members: dict[str, list[int]] = {}
        for i, group in enumerate(targets.groups):
            members.setdefault(group, []).append(i)
        for metric in metrics:
            results[metric]["by_group"] = {
                group: (_loss_figures([sums[i] for i in idx], [counts[i] for i in idx]) if metric == "loss"
                        else figures[metric]([recs[i] for i in idx]))
                for group, idx in members.items()
            }
    generation = {**asdict(opts), "prompt": prompt, "batch_size": batch_size} if generated else None
    return EvalReport(model_name, data.name, len(convs), results, data.skipped, recs if records else None,
                      generation, group_by)
