"""The conversation data pipeline: dataset entries -> tokenized samples -> mixture and validation split.

Per dataset: read rows (sources.py), convert them to conversations
(formats.py), check and resolve their media (media.py), split into trained /
untrained segments (templates.py), tokenize (tokenize.py). The result is
cached on disk keyed on the data's content, the tokenizer, the chat template,
max length, masking options and each media branch's token-count rule (and
companion: a video's sound track), so a second run with the same inputs skips
preprocessing. Every row that is not used is counted by reason; with
``on_bad_sample: error`` the first one stops the run with its file, row and
field.

Samples of any modality carry an ordered list of media items. Each item's
file is resolved inside the dataset's media folder and its header checked once
here; it is decoded lazily when batches are built. With a multimodal model,
every media tag expands to its branch's number of tokens for that item.

Task formats (``vqa``, ``caption``) draw a template (and an answer or
caption) per row, seeded by the dataset's ``draw_seed`` (default: the
recipe's seed) and the row's index; the drawn template is kept as the
sample's metadata. Datasets marked ``held_out`` are for zero-shot
evaluation and are refused here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mmtune.config.schema import DataConfig
from mmtune.data.erasure import erase_system_prompt
from mmtune.data.formats import (
    ROW_CONVERTERS,
    BadRow,
    Conversation,
    Mapping,
    check_conversation,
    oasst_flat_forest,
    oasst_nested_tree,
    oasst_threads,
)
from mmtune.data.instruction_templates import INSTRUCTION_FORMATS, template_meta
from mmtune.data.media import media_items_of, media_slots, media_tags
from mmtune.data.sni import sni_conversations, sni_path, task_of, task_sources
from mmtune.data.sources import MalformedRow, ResolvedSource, iter_rows, resolve_source, resolve_templates
from mmtune.data.task_formats import INSTRUCTION_CONVERTERS, InstructionOptions, captions_by_image
from mmtune.data.templates import split_segments
from mmtune.data.tokenize import boundary_mismatches, encode_segments
from mmtune.errors import ConfigError, DataError
from mmtune.modalities import MODALITIES
from mmtune.modalities.base import MediaInputSpec, MediaItem
from mmtune.models.aliases import cache_root
from mmtune.utils.atomic import atomic_directory

log = logging.getLogger(__name__)
CACHE_VERSION = 5  # bump when tokenization, masking or the stored layout changes
_BATCH = 256


@dataclass
class SourceReport:
    name: str
    rows: int = 0
    samples: int = 0
    truncated: int = 0
    media: dict[str, int] = field(default_factory=dict)
    """Media items kept, per modality."""
    media_cut: dict[str, int] = field(default_factory=dict)
    """Media items dropped because truncation would have cut through them (the text before them is kept)."""
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    """First location seen for each skip reason, so the user can go and look."""
    from_cache: bool = False
    erased: int = 0
    """System messages replaced by ``prompt_erasure``."""

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.examples.setdefault(reason, where)


@dataclass
class TokenizedSource:
    """All tokenized samples of one dataset, stored flat (cheap to cache and memory-map)."""

    name: str
    input_ids: np.ndarray  # int32, all samples concatenated
    trained: np.ndarray  # bool, same length
    offsets: np.ndarray  # int64 [n + 1]
    report: SourceReport
    media: list[list[MediaItem]] | None = None
    """Per sample, its media items in order (None: a text-only source)."""
    meta: list[dict[str, str]] = field(default_factory=list)
    """Per-sample metadata (e.g. the erased system prompt); empty when no sample has any."""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[a:b], self.trained[a:b]

    def media_of(self, i: int) -> list[MediaItem]:
        return self.media[i] if self.media is not None else []


@dataclass
class SampleView:
    """A selection of samples across sources: ``refs[k] = (source index, sample index)``."""

    sources: list[TokenizedSource]
    refs: np.ndarray  # int64 [n, 2]
    task_of_source: tuple[int, ...] = ()
    """Per source, the index of its task in ``tasks`` (-1: none); empty when no dataset names a task."""
    tasks: tuple[str, ...] = ()
    """The task names of a multi-task mixture (``data.datasets[].task``, or the task files of an ``sni`` folder),
    in order of first mention."""

    def __len__(self) -> int:
        return len(self.refs)

    def task(self, k: int) -> int:
        """The task index of sample ``k`` (-1: its dataset names none)."""
        return self.task_of_source[self.refs[k][0]] if self.task_of_source else -1

    def lengths(self) -> np.ndarray:
        out = np.zeros(len(self.refs), dtype=np.int64)
        for s, source in enumerate(self.sources):
            mine = self.refs[:, 0] == s
            out[mine] = source.lengths()[self.refs[mine, 1]]
        return out

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, i = self.refs[k]
        return self.sources[s].sample(int(i))

    def media(self, k: int) -> list[MediaItem]:
        """The media items of sample ``k``, in the order of their placeholders."""
        s, i = self.refs[k]
        return self.sources[s].media_of(int(i))

    def meta(self, k: int) -> dict[str, str]:
        """Metadata of sample ``k`` (``{}`` when its dataset keeps none)."""
        s, i = self.refs[k]
        return self.sources[s].meta[int(i)] if self.sources[s].meta else {}


@dataclass
class ConversationData:
    train: SampleView
    val: SampleView
    reports: list[SourceReport]


# --------------------------------------------------------------------------- reading


def conversations_of(src: ResolvedSource, report: SourceReport, on_bad: str):
    """Yield ``(location, conversation)`` for every usable sample of ``src``.

    Evaluation reads a card's conversations through here too (``evaluation.load_eval_data``), so a task
    format's conversations carry their ``references`` (and ``choices``) there as in training.
    """
    settings = src.settings
    try:
        mapping = Mapping.for_format(src.format, settings.columns, settings.roles)
    except ValueError as exc:
        raise ConfigError(f"dataset '{src.name}': {exc}") from None

    def bad(where: str, reason: str, detail: str) -> None:
        if on_bad == "error":
            raise DataError(f"{where}: {detail}", reason=reason)
        report.skip(reason, where)

    def indexed_rows():
        """``(index in the file, location, row)`` of every readable row; malformed rows are reported."""
        for index, (where, row) in enumerate(iter_rows(src)):
            report.rows += 1
            if isinstance(row, MalformedRow):
                bad(where, row.reason, row.detail)
                continue
            yield index, where, row

    def good_rows():
        for _, where, row in indexed_rows():
            yield where, row

    if src.format in INSTRUCTION_FORMATS:
        yield from _instruction_conversations(src, mapping, indexed_rows(), bad)
        return

    if src.format == "sni":  # whole task files, an instance per row
        def bad_instance(where: str, reason: str, detail: str) -> None:
            report.rows += 1
            bad(where, reason, detail)

        for where, conv in sni_conversations(sni_path(src), mapping, in_prompt=settings.instruction_in_prompt is not False,
                                             examples=settings.instruction_examples, bad=bad_instance):
            report.rows += 1
            yield where, conv
        return

    if src.format == "oasst":
        rows = list(good_rows())
        nested = bool(rows) and "prompt" in rows[0][1] and mapping.columns["id"] not in rows[0][1]
        if nested:
            for where, row in rows:
                try:
                    root = oasst_nested_tree(row, mapping)
                except BadRow as exc:
                    bad(where, exc.reason, f"field '{exc.field_name}': {exc.detail}")
                    continue
                for thread in oasst_threads(root, settings.oasst_best_path_only):
                    yield from _checked(where, thread, bad)
        else:
            roots, problems = oasst_flat_forest(rows, mapping)
            for where, exc in problems:
                bad(where, exc.reason, f"field '{exc.field_name}': {exc.detail}")
            for root in roots:
                for thread in oasst_threads(root, settings.oasst_best_path_only):
                    yield from _checked(f"{src.name}: tree '{thread[0]['content'][:30]}'", thread, bad)
        return

    convert = ROW_CONVERTERS[src.format]
    for where, row in good_rows():
        try:
            convs = convert(row, mapping)
        except BadRow as exc:
            bad(where, exc.reason, f"field '{exc.field_name}': {exc.detail}")
            continue
        for conv in convs:
            yield where, conv


def _instruction_conversations(src: ResolvedSource, mapping: Mapping, rows, bad):
    """A task format's samples from ``(index, location, row)``; each row's draws are seeded by its index in
    the file, so skipping a bad row changes no other sample."""
    settings = src.settings
    templates = settings.templates
    if not isinstance(templates, list):  # a source built without resolve_source
        templates = resolve_templates(templates, src.format, Path.cwd(), src.name, columns=settings.columns)
    references: dict[str, list[str]] = {}
    if src.format in ("caption", "caption_pair"):
        rows = list(rows)  # a first pass gathers every caption of each image (one-caption-per-row layouts)
        references = captions_by_image(((where, row) for _, where, row in rows), mapping)
    seed = settings.draw_seed if settings.draw_seed is not None else 0
    opts = InstructionOptions(templates, settings.answer_selection, settings.caption_samples, seed, references)
    convert = INSTRUCTION_CONVERTERS[src.format]
    for index, where, row in rows:
        try:
            convs = convert(row, mapping, opts, index)
        except BadRow as exc:
            bad(where, exc.reason, f"field '{exc.field_name}': {exc.detail}")
            continue
        for conv in convs:
            yield where, conv


def _checked(where: str, conv: Conversation, bad):
    try:
        yield where, check_conversation(conv, "thread")
    except BadRow as exc:
        bad(where, exc.reason, f"{exc.detail}")


# --------------------------------------------------------------------------- tokenizing


def tokenize_source(tokenizer, src: ResolvedSource, cfg: DataConfig,
                    media: dict[str, MediaInputSpec] | None = None) -> TokenizedSource:
    media = media or {}
    tags = media_tags(media)
    report = SourceReport(src.name)
    ids_chunks: list[np.ndarray] = []
    mask_chunks: list[np.ndarray] = []
    lengths: list[int] = []
    sample_media: list[list[MediaItem]] = []
    metas: list[dict[str, str]] = []
    pending: list[tuple[str, list, Conversation, list[MediaItem], dict[str, str], list]] = []
    checked = False

    def flush() -> None:
        nonlocal checked
        encoded = encode_segments(
            tokenizer, [segs for _, segs, *_ in pending], max_length=cfg.max_length,
            train_on_prompt=cfg.train_on_prompt, media=[slots for *_, slots in pending],
            tags=tags,
        )
        if not checked and not cfg.train_on_prompt and not encoded[0].truncated and not pending[0][3]:
            checked = True
            bad_turns = boundary_mismatches(tokenizer, pending[0][2], encoded[0])
            if bad_turns:
                log.warning("%s: the chat template's turn boundaries do not tokenize like the whole prompt "
                            "(assistant turns %s): training tokens differ slightly from inference tokens",
                            pending[0][0], bad_turns)
        for (where, _, _, items, meta, _), enc in zip(pending, encoded):
            if not enc.trained[1:].any():  # the first token is never a target
                detail = f"no trained token left after truncation to max_length={cfg.max_length}"
                if cfg.on_bad_sample == "error":
                    raise DataError(f"{where}: {detail}", reason="no trained token")
                report.skip("no trained token after truncation", where)
                continue
            report.truncated += int(enc.truncated)
            for item in items[: enc.media_kept]:
                report.media[item.modality] = report.media.get(item.modality, 0) + 1
            for item in items[enc.media_kept:]:
                report.media_cut[item.modality] = report.media_cut.get(item.modality, 0) + 1
            sample_media.append(items[: enc.media_kept])
            ids_chunks.append(enc.input_ids)
            mask_chunks.append(enc.trained)
            lengths.append(len(enc.input_ids))
            metas.append(meta)
        pending.clear()

    with tqdm(desc=f"tokenizing {src.name}", unit=" samples", leave=False, mininterval=1.0, disable=None) as bar:
        for where, conv in conversations_of(src, report, cfg.on_bad_sample):
            meta: dict[str, str] = template_meta(conv)
            if src.settings.prompt_erasure is not None:
                conv, erased = erase_system_prompt(conv, src.settings.prompt_erasure)
                report.erased += bool(erased)
                meta.update(erased)
            try:
                has_media = any(msg.get("media") for msg in conv)
                items = media_items_of(conv, media, root=src.media_root() if has_media else None, where=where,
                                       dataset=src.name)
                slots = media_slots(items, media)
            except BadRow as exc:
                if cfg.on_bad_sample == "error":
                    raise DataError(f"{where}: field '{exc.field_name}': {exc.detail}", reason=exc.reason) from None
                report.skip(exc.reason, where)
                continue
            try:
                segments = split_segments(tokenizer, conv)
            except DataError as exc:
                raise DataError(f"{where}: {exc}", reason=exc.reason) from None
            except Exception as exc:  # jinja raises its own errors from inside templates
                if cfg.on_bad_sample == "error":
                    raise DataError(f"{where}: the chat template failed on this conversation: {exc}") from None
                report.skip("template error", where)
                continue
            pending.append((where, segments, conv, items, meta, slots))
            if len(pending) >= _BATCH:
                flush()
            bar.update()
            if src.max_samples is not None and len(lengths) + len(pending) >= src.max_samples:
                break
        if pending:
            flush()
    report.samples = len(lengths)
    if report.samples == 0:
        raise DataError(f"dataset '{src.name}': no usable sample ({_skip_summary(report) or 'empty'})", reason="empty dataset")
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedSource(
        src.name,
        np.concatenate(ids_chunks).astype(np.int32),
        np.concatenate(mask_chunks),
        offsets,
        report,
        sample_media if any(sample_media) else None,
        metas if any(metas) else [],
    )


def _skip_summary(report: SourceReport) -> str:
    return ", ".join(f"{n} {reason} (first at {report.examples[reason]})" for reason, n in report.skipped.items())


# --------------------------------------------------------------------------- caching


def tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.blake2b(digest_size=16)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update((tokenizer.chat_template or "").encode())
    return h.hexdigest()


def cache_key(src: ResolvedSource, tok_fp: str, cfg: DataConfig, media: dict[str, MediaInputSpec] | None = None) -> str:
    payload = {
        "v": CACHE_VERSION,
        "data": src.fingerprint(),
        "source": src.settings.model_dump(mode="json"),
        "max_samples": src.max_samples,
        "tokenizer": tok_fp,
        "template": cfg.template,
        "max_length": cfg.max_length,
        "train_on_prompt": cfg.train_on_prompt,
        "on_bad_sample": cfg.on_bad_sample,
        # a companion (a video's sound track) adds items, so it changes the tokens as the count rule does
        "media_tokens": {name: spec.count.rule + (f"+{spec.companion}" if spec.companion else "")
                         for name, spec in sorted((media or {}).items())},
    }
    return hashlib.blake2b(json.dumps(payload, sort_keys=True).encode(), digest_size=16).hexdigest()


def data_cache_dir(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else cache_root() / "data"


def load_or_tokenize(tokenizer, src: ResolvedSource, cfg: DataConfig, tok_fp: str,
                     media: dict[str, MediaInputSpec] | None = None) -> TokenizedSource:
    if not cfg.cache:
        return tokenize_source(tokenizer, src, cfg, media)
    if src.path is not None and not src.path.is_file():
        raise src.missing_file()
    folder = data_cache_dir(cfg) / cache_key(src, tok_fp, cfg, media)
    if (folder / "report.json").is_file():
        report = SourceReport(**json.loads((folder / "report.json").read_text()))
        report.from_cache = True
        items = None
        if (folder / "media.json").is_file():
            items = [[MediaItem.from_json(d) for d in sample] for sample in json.loads((folder / "media.json").read_text())]
        return TokenizedSource(
            src.name,
            np.load(folder / "input_ids.npy", mmap_mode="r"),
            np.load(folder / "trained.npy", mmap_mode="r"),
            np.load(folder / "offsets.npy"),
            report,
            items,
            json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else [],
        )
    result = tokenize_source(tokenizer, src, cfg, media)
    with atomic_directory(folder) as tmp:
        np.save(tmp / "input_ids.npy", result.input_ids)
        np.save(tmp / "trained.npy", result.trained)
        np.save(tmp / "offsets.npy", result.offsets)
        if result.media is not None:
            (tmp / "media.json").write_text(json.dumps([[item.to_json() for item in sample] for sample in result.media]))
        (tmp / "report.json").write_text(json.dumps(asdict(result.report)))
        if result.meta:
            (tmp / "meta.json").write_text(json.dumps(result.meta))
    return result


# --------------------------------------------------------------------------- mixing


def mixture_counts(sizes: list[int], weights: list[float], mode: str, total: int | None, *,
                   temperature: float = 2.0) -> list[int]:
    """Samples to draw from each dataset per epoch.

    ``concat``: each dataset once. ``weighted``: p_d ~ weight_d. ``sqrt``:
    p_d ~ weight_d * sqrt(size_d), InstructBLIP's balancing of large and small sets. ``temperature``:
    p_d ~ weight_d * size_d ** (1 / T), the multi-task sampling of T5 and mT5 (T = 2 is ``sqrt``; large T
    approaches uniform, so small tasks are not drowned by large ones).
    """
    if mode == "concat":
        return list(sizes)
    exponent = {"weighted": 0.0, "sqrt": 0.5, "temperature": 1.0 / temperature}[mode]
    scores = np.array(weights, dtype=float) * np.power(np.array(sizes, dtype=float), exponent)
    probs = scores / scores.sum()
    n = total if total is not None else int(sum(sizes))
    counts = np.floor(probs * n).astype(int)
    remainder = n - counts.sum()
    for d in np.argsort(-(probs * n - counts))[:remainder]:
        counts[d] += 1
    return counts.tolist()


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
    """``count`` items from ``pool``: whole shuffled passes, then a partial one (no needless repeats)."""
    if len(pool) == 0 or count == 0:
        return pool[:0]
    reps = [rng.permutation(pool) for _ in range(count // len(pool) + 1)]
    return np.concatenate(reps)[:count]


def training_source(src: ResolvedSource, seed: int) -> ResolvedSource:
    """``src`` as training reads it: a held-out dataset is refused; a task format without its own
    ``draw_seed`` draws with the recipe's ``seed`` (which thereby enters the tokenized-cache key)."""
    if src.settings.held_out:
        raise ConfigError(f"dataset '{src.name}' is marked held_out; it is for zero-shot evaluation "
                          f"(mmtune eval --data {src.name}), not training")
    if src.format in INSTRUCTION_FORMATS and src.settings.draw_seed is None:
        return replace(src, settings=src.settings.model_copy(update={"draw_seed": seed}))
    return src


def build_conversation_data(tokenizer, cfg: DataConfig, *, seed: int,
                            media: dict[str, MediaInputSpec] | None = None) -> ConversationData:
    """Tokenized, mixed and split conversations, text-only or with media.

    ``media``: per modality the model has a branch for, what the data needs
    from that branch (token count per item above all); none for a text model.
    ``data.replay`` datasets give no validation samples (their held-out sets are their own stage's) and add
    ``replay_fraction / (1 - replay_fraction)`` times the mixture's samples, in proportion to their sizes.
    """
    if not cfg.datasets:
        raise ConfigError("data.datasets: no dataset given")
    # An sni folder is one source per task file, each its own task of the mixture.
    def parts_of(specs: list) -> list[tuple]:
        return [(spec, src) for spec in specs for src in task_sources(training_source(resolve_source(spec), seed))]

    own_parts, replay_parts = parts_of(cfg.datasets), parts_of(cfg.replay)
    resolved = [src for _, src in own_parts + replay_parts]
    task_names = [task_of(spec, src) for spec, src in own_parts + replay_parts]
    tok_fp = tokenizer_fingerprint(tokenizer)
    sources = [load_or_tokenize(tokenizer, src, cfg, tok_fp, media) for src in resolved]
    own = len(own_parts)
    rng = np.random.default_rng(seed)
    train_pools, val_refs = [], []
    sizes = [len(s) for s in sources[:own]]
    n_val = [int(round(cfg.val_fraction * n)) for n in sizes]
    if sum(n_val) > cfg.val_max_samples:
        scale = cfg.val_max_samples / sum(n_val)
        n_val = [int(v * scale) for v in n_val]
    for d, src in enumerate(sources[:own]):
        perm = rng.permutation(len(src))
        val_refs.append(np.stack([np.full(n_val[d], d), np.sort(perm[: n_val[d]])], axis=1))
        train_pools.append(np.sort(perm[n_val[d]:]))
    counts = mixture_counts([len(p) for p in train_pools], [r.weight for r in resolved[:own]], cfg.mixture,
                            cfg.mixture_size, temperature=cfg.mixture_temperature)
    train_refs = []
    for d, pool in enumerate(train_pools):
        chosen = pool if cfg.mixture == "concat" else np.sort(_draw(rng, pool, counts[d]))
        train_refs.append(np.stack([np.full(len(chosen), d), chosen], axis=1))
    if cfg.replay:
        train_refs += _replay_refs(rng, sources, own, sum(len(r) for r in train_refs), cfg.replay_fraction)
    if sum(len(r) for r in train_refs) == 0:
        raise DataError(f"no training sample left after holding out {sum(n_val)} for validation "
                        f"(data.val_fraction={cfg.val_fraction})", reason="empty dataset")
    tasks = tuple(dict.fromkeys(name for name in task_names if name))
    task_of_source = tuple(tasks.index(name) if name else -1 for name in task_names) if tasks else ()
    return ConversationData(
        SampleView(sources, np.concatenate(train_refs).astype(np.int64), task_of_source, tasks),
        SampleView(sources, np.concatenate(val_refs).astype(np.int64), task_of_source, tasks),
        [s.report for s in sources],
    )


def _replay_refs(rng: np.random.Generator, sources: list[TokenizedSource], first: int, own_samples: int,
                 fraction: float) -> list[np.ndarray]:
    """Refs of the replayed samples: ``fraction`` of the final mixture, from ``sources[first:]`` by size."""
    total = round(fraction / (1.0 - fraction) * own_samples)
    replayed = sources[first:]
    sizes = [len(s) for s in replayed]
    shares = mixture_counts(sizes, [float(n) for n in sizes], "weighted", total) if total else [0] * len(sizes)
    refs = []
    for j, (src, count) in enumerate(zip(replayed, shares)):
        chosen = np.sort(_draw(rng, np.arange(len(src)), count))
        refs.append(np.stack([np.full(len(chosen), first + j), chosen], axis=1))
    return refs


def format_reports(reports: list[SourceReport]) -> list[str]:
    lines = []
    for r in reports:
        line = f"{r.name}: {r.samples} samples from {r.rows} rows, {r.truncated} truncated"
        for name in dict.fromkeys([*r.media, *r.media_cut]):
            line += f", {r.media.get(name, 0)} {MODALITIES[name].plural} ({r.media_cut.get(name, 0)} dropped by truncation)"
        if r.skipped:
            line += f", skipped {sum(r.skipped.values())}: {_skip_summary(r)}"
        if r.erased:
            line += f", {r.erased} system prompts erased"
        if r.from_cache:
            line += " (tokenized cache)"
        lines.append(line)
    return lines
