"""Evaluate a model (text or multimodal, or a proxy-tuned combination) on held-out conversations.

Metrics: exact match, numeric accuracy, loss.

Why these three: exact match and numeric accuracy judge what the model
*generates* for the last user turn against the gold answer (after a light
text normalisation, or on the number it states); the loss judges how likely the
model finds the gold answers, computed exactly like training's validation loss
(same template rendering, same answer-only mask via ``split_segments`` /
``encode_segments``), averaged over answer tokens. Data is read by the same
readers as training, so any supported format (alpaca, sharegpt, openai, dolly,
oasst, llava with its images) or a dataset card works; a multimodal model
answers from the media of each conversation through the same decoding loop as
chat. The judges are plain functions, importable on
their own for other tools (e.g. building self-correction data).
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
from mmtune.data.formats import Conversation
from mmtune.errors import ConfigError, DataError
from mmtune.generation.options import BATCH_SIZE, GenerationOptions

METRICS = ("exact", "numeric", "loss")
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

# --------------------------------------------------------------------------- data


@dataclass
class EvalReport:
    """What ``mmtune eval`` writes as JSON: per-metric figures, counts, and optionally per-sample records."""

    model: str
    data: str
    samples: int
    metrics: dict[str, dict[str, Any]]
    skipped: dict[str, int] = field(default_factory=dict)
    records: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.records is None:
            out.pop("records")
        return out

    def write(self, path: Path) -> Path:
        from mmtune.utils.atomic import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def summary(self) -> str:
        parts = [f"{self.samples} samples"]
        m = self.metrics
        if "exact" in m:
            parts.append(f"exact match {m['exact']['accuracy']:.3f} ({m['exact']['correct']}/{m['exact']['count']})")
        if "numeric" in m:
            acc = m["numeric"]["accuracy"]
            parts.append(f"numeric accuracy {'n/a' if acc is None else f'{acc:.3f}'} "
                         f"({m['numeric']['correct']}/{m['numeric']['count']})")
        if "loss" in m:
            parts.append(f"loss {m['loss']['loss']:.4f} (ppl {m['loss']['perplexity']:.2f}, {m['loss']['tokens']} tokens)")
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
        raise DataError(f"{where}: cannot tell the data format from the fields {sorted(keys)}; "
                        "name it with --format (alpaca, sharegpt, openai, dolly, oasst, llava)", reason="unknown format")
    raise DataError(f"{path}: no rows", reason="empty dataset")


@dataclass
class EvalData:
    """Held-out conversations (each ending with the gold answer), where each came from, and what was skipped."""

    name: str
    conversations: list[tuple[str, Conversation]]
    skipped: dict[str, int] = field(default_factory=dict)


def load_eval_data(data: str | Path, *, data_format: str = "auto", max_samples: int | None = None,
                   on_bad_sample: str = "error") -> EvalData:
    """Conversations from a file (any training format, detected from its first row) or a dataset card name."""
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
    for where, conv in conversations_of(source, report, on_bad_sample):
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
    return EvalData(str(data), convs, dict(report.skipped))


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


# --------------------------------------------------------------------------- evaluate


def evaluate(
    model_or_source,
    tokenizer,
    data: str | Path | EvalData | Sequence[Conversation],
    metrics: Sequence[str] = METRICS,
    opts: GenerationOptions | None = None,
    *,
    data_format: str = "auto",
    max_samples: int | None = None,
    batch_size: int = BATCH_SIZE,
    max_length: int | None = None,
    number: str = "last",
    tolerance: float = 1e-6,
    records: bool = True,
    progress: bool = True,
    model_name: str = "",
) -> EvalReport:
    """Evaluate on held-out data: a file / card name, :class:`EvalData`, or conversations ending with the gold answer.

    ``model_or_source`` is a causal LM or a :class:`mmtune.generation.proxy.ProxyTuned`.
    Generation (for ``exact`` / ``numeric``) answers the last user turn with
    the history before it, batched and seeded by ``opts`` (default greedy).
    ``max_length``: token limit of the loss (default: ``data.max_length``'s).
    """
    metrics = list(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ConfigError(f"metrics: unknown {unknown or 'none given'}; choose from {', '.join(METRICS)}")
    if number not in ("first", "last"):
        raise ConfigError(f"number: '{number}' is not 'first' or 'last'")
    opts = opts or GenerationOptions()
    if isinstance(data, (str, Path)):
        data = load_eval_data(data, data_format=data_format, max_samples=max_samples)
    elif not isinstance(data, EvalData):
        data = eval_data_of(data, max_samples)
    located = data.conversations
    wheres = [where for where, _ in located]
    convs = [c for _, c in located]
    recs: list[dict[str, Any]] = [
        {"where": where, "prompt": conv[-2]["content"], "gold": conv[-1]["content"]} for where, conv in located
    ]
    results: dict[str, dict[str, Any]] = {}
    if "exact" in metrics or "numeric" in metrics:
        from mmtune.generation.decoding import generate_texts

        preds = generate_texts(model_or_source, tokenizer, [c[:-1] for c in convs], opts,
                               batch_size=batch_size, progress=progress, desc="eval generation", wheres=wheres)
        for rec, pred in zip(recs, preds):
            rec["prediction"] = pred
        if "exact" in metrics:
            hits = [exact_match(r["prediction"], r["gold"]) for r in recs]
            for rec, hit in zip(recs, hits):
                rec["exact"] = hit
            results["exact"] = {"accuracy": sum(hits) / len(hits), "correct": sum(hits), "count": len(hits)}
        if "numeric" in metrics:
            judged = [numeric_match(r["prediction"], r["gold"], which=number, tolerance=tolerance) for r in recs]
            for rec, hit in zip(recs, judged):
                rec["numeric"] = hit
            scored = [h for h in judged if h is not None]
            results["numeric"] = {
                "accuracy": sum(scored) / len(scored) if scored else None, "correct": sum(scored),
                "count": len(scored), "no_gold_number": len(judged) - len(scored),
                "number": number, "tolerance": tolerance,
            }
    if "loss" in metrics:
        sums, counts, truncated = answer_loss(model_or_source, tokenizer, convs, max_length=max_length,
                                              batch_size=batch_size, progress=progress, wheres=wheres)
        tokens = sum(counts)
        mean = sum(sums) / tokens if tokens else float("nan")
        for rec, s, n in zip(recs, sums, counts):
            rec["loss"], rec["answer_tokens"] = (s / n if n else None), n
        results["loss"] = {"loss": mean, "perplexity": math.exp(mean) if tokens else float("nan"),
                           "tokens": tokens, "truncated": truncated, "max_length": max_length or _DEFAULT_MAX_LENGTH}
    return EvalReport(model_name, data.name, len(convs), results, data.skipped, recs if records else None)
