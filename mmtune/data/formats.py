"""Dataset formats -> conversations.

Every format turns one raw row into zero or more *conversations*: lists of
``{"role": "system"|"user"|"assistant", "content": str}`` messages, which is
exactly what ``tokenizer.apply_chat_template`` takes. ``columns`` maps a
canonical field name to the file's column name and ``roles`` maps a canonical
role to the file's role name, so a dataset card adapts any file without code.

Problems raise :class:`BadRow` with a reason (used as the skip counter's key)
and the field; the reader adds file and row.

The task formats ``vqa``, ``caption`` (InstructBLIP's instruction data) and
``caption_pair`` (a caption of an image, video or audio clip: stage-1 alignment
data such as WebVid, AudioCaps, Clotho) also depend on the row's index and the
dataset's draw options; their converters are in ``task_formats.py`` (their
column defaults are here).

Media columns are those of the registered modalities (``image``, ``video``,
``audio``: :data:`~mmtune.modalities.MODALITIES`); in every format that has
one, a column may instead be a pattern over the row's fields
(``"{page_dir}/{videoid}.mp4"``), for layouts that name files by id.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from mmtune.data.self_correction import self_correction_parts
from mmtune.modalities import MODALITIES

Message = dict[str, Any]
"""``role`` and ``content``; a user turn with media tags adds ``media``: one ``{"modality", "ref", "field"}``
per tag, in the order of the tags (``ref`` as written in the row, ``field`` the column it came from; a clip
of a video or audio file adds ``"options": {"start": seconds, "end": seconds}``). An assistant message may
add partial-answer-masking ``parts`` (see self_correction.py).

The task formats (``vqa``, ``caption``) add what evaluation needs and chat templates ignore: on the user
message ``template`` (the drawn template, ``"<index>: <text>"``); on the assistant message ``references``
(list[str]: every annotator's answer, repeats kept, or every caption of the image) and, for multiple-choice
rows, ``choices`` (list[str]) and ``correct_choice`` (int index into ``choices``, when the row gives it)."""
Conversation = list[Message]
CANONICAL_ROLES = ("system", "user", "assistant")
MEDIA_COLUMNS = tuple(MODALITIES)
"""The media columns a format may read: one per registered modality, named after it (``image``, ``video``,
``audio``)."""


class BadRow(Exception):
    def __init__(self, reason: str, field_name: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field_name = field_name
        self.detail = detail


@dataclass(frozen=True)
class FormatSpec:
    """Default column and role names of a format; a card overrides any of them."""

    columns: dict[str, str]
    roles: dict[str, str] = field(default_factory=lambda: {r: r for r in CANONICAL_ROLES})


FORMAT_DEFAULTS: dict[str, FormatSpec] = {
    "alpaca": FormatSpec(
        {"instruction": "instruction", "input": "input", "output": "output", "system": "system", "history": "history"}
    ),
    "sharegpt": FormatSpec(
        {"messages": "conversations", "role": "from", "content": "value", "system": "system"},
        {"system": "system", "user": "human", "assistant": "gpt"},
    ),
    "openai": FormatSpec({"messages": "messages", "role": "role", "content": "content", "system": "system"}),
    "dolly": FormatSpec({"instruction": "instruction", "context": "context", "response": "response"}),
    "oasst": FormatSpec(
        {"id": "message_id", "parent": "parent_id", "text": "text", "role": "role", "rank": "rank"},
        {"user": "prompter", "assistant": "assistant"},
    ),
    "self_correction": FormatSpec(
        {"question": "question", "initial_answer": "initial_answer", "correct": "correct", "reason": "reason",
         "revised_answer": "revised_answer", "system": "system"}
    ),
}
FORMAT_DEFAULTS["vqa"] = FormatSpec(  # defaults: LAVIS's one-file layout {question_id, question, answer, image}
    {"image": "image", "question": "question", "answers": "answer", "choices": "choices",
     "correct_choice": "correct_choice"}
)
FORMAT_DEFAULTS["caption"] = FormatSpec({"image": "image", "captions": "caption", "references": "references"})
FORMAT_DEFAULTS["caption_pair"] = FormatSpec(  # the media column is the one the card names (see Mapping.media)
    {**{name: name for name in MEDIA_COLUMNS}, "captions": "caption", "references": "references",
     "start": "start", "end": "end"}
)
FORMAT_DEFAULTS["sni"] = FormatSpec(  # Super-NaturalInstructions task files (``sni.py``)
    {"definition": "Definition", "positive_examples": "Positive Examples", "instances": "Instances",
     "input": "input", "output": "output"}
)
FORMAT_DEFAULTS["vicuna"] = FORMAT_DEFAULTS["sharegpt"]
FORMAT_DEFAULTS["llava"] = FormatSpec(  # LLaVA / LLaVA-Video / Video-ChatGPT training JSON: one column per modality
    {"id": "id", **{name: name for name in MEDIA_COLUMNS}, "messages": "conversations", "role": "from",
     "content": "value", "system": "system"},
    FORMAT_DEFAULTS["sharegpt"].roles,
)
FORMAT_DEFAULTS["videochat"] = FormatSpec(  # VideoChat / Video-LLaMA: {video, QA: [{i, q, a}]}; Video-ChatGPT {video_id, q, a}
    {"video": "video", "qa": "QA", "instruction": "i", "question": "q", "answer": "a", "start": "start", "end": "end",
     "system": "system"}
)


def pattern_fields(pattern: str, column: str = "image") -> list[str]:
    """The row fields a media pattern such as ``train2017/{image_id:012d}.jpg`` reads (ValueError if malformed)."""
    try:
        parsed = list(Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"column '{column}': malformed pattern {pattern!r} ({exc})") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    if not names or not all(names):
        raise ValueError(f"column '{column}': pattern {pattern!r} must name the row's fields, e.g. {{{column}_id}}")
    return [name.split(".")[0].split("[")[0] for name in names]


def caption_media(columns: dict[str, str]) -> str:
    """The modality of a ``caption_pair`` dataset: the one media column its ``columns`` name (ValueError if
    none or several)."""
    named = [name for name in MEDIA_COLUMNS if name in columns]
    if len(named) != 1:
        given = f"it names {named}" if named else "it names none"
        raise ValueError(f"format 'caption_pair' reads the one media column its 'columns' name: one of "
                         f"{list(MEDIA_COLUMNS)} (e.g. columns: {{video: video}}); {given}")
    return named[0]


@dataclass
class Mapping:
    """Resolved column and role names for one dataset."""

    columns: dict[str, str]
    roles: dict[str, str]
    media: str | None = None
    """``caption_pair``: the modality of the dataset's media column (``image``, ``video`` or ``audio``)."""

    @classmethod
    def for_format(cls, fmt: str, columns: dict[str, str], roles: dict[str, str]) -> "Mapping":
        base = FORMAT_DEFAULTS[fmt]
        unknown = set(columns) - set(base.columns)
        if unknown:
            raise ValueError(f"unknown column field(s) for format '{fmt}': {sorted(unknown)}; valid: {sorted(base.columns)}")
        bad_roles = set(roles) - set(CANONICAL_ROLES)
        if bad_roles:
            raise ValueError(f"unknown role key(s) {sorted(bad_roles)}; valid: {list(CANONICAL_ROLES)}")
        for name in MEDIA_COLUMNS:
            if "{" in columns.get(name, ""):
                pattern_fields(columns[name], name)
        media = caption_media(columns) if fmt == "caption_pair" else None
        return cls({**base.columns, **columns}, {**base.roles, **roles}, media)

    def role_lookup(self) -> dict[str, str]:
        return {file_name: canonical for canonical, file_name in self.roles.items()}


def _get(row: dict[str, Any], m: Mapping, name: str, *, required: bool) -> Any:
    col = m.columns[name]
    value = row.get(col)
    if value is None or (isinstance(value, str) and not value.strip() and required):
        if required:
            raise BadRow("missing field", col, f"required field '{col}' is missing or empty")
        return None
    return value


def _text(value: Any, col: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        # OpenAI content parts: keep text parts, refuse anything else.
        texts = []
        for part in value:
            if part.get("type") != "text":
                raise BadRow("unsupported content", col, f"content part of type '{part.get('type')}' in a text dataset")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise BadRow("wrong field type", col, f"field '{col}' must be a string, got {type(value).__name__}")


def media_ref(row: dict[str, Any], m: Mapping, name: str) -> tuple[str, str]:
    """The row's reference of the ``name`` media column and the field it came from: a column, or a pattern over
    the row's fields (real layouts that name files by id: TextVQA ``train_images/{image_id}.jpg``, WebVid
    ``{page_dir}/{videoid}.mp4``)."""
    col = m.columns[name]
    if "{" not in col:
        value = _get(row, m, name, required=True)
        if not isinstance(value, str):
            article = "an" if name[0] in "aeiou" else "a"
            raise BadRow("wrong field type", col,
                         f"field '{col}' must be {article} {name} path, got {type(value).__name__}")
        return value, col
    names = pattern_fields(col, name)
    for field_name in names:
        if row.get(field_name) is None or (isinstance(row[field_name], str) and not row[field_name].strip()):
            raise BadRow("missing field", field_name,
                         f"required field '{field_name}' (of the {name} pattern '{col}') is missing")
    try:
        return col.format_map(row), names[0]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise BadRow("wrong field type", names[0], f"{name} pattern '{col}' does not fit this row: {exc}") from None


def _seconds(value: Any, col: str) -> float:
    """A time in seconds: a number, or a string of one, or ``[[H:]M:]S`` (``00:07:33.689``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRow("wrong field type", col, f"field '{col}' must be a time in seconds, got {type(value).__name__}")
    try:
        if isinstance(value, str) and ":" in value:
            parts = [float(part) for part in value.strip().split(":")]
            if len(parts) > 3:
                raise ValueError(value)
            seconds = 0.0
            for part in parts:
                seconds = seconds * 60 + part
        else:
            seconds = float(value)
    except ValueError:
        raise BadRow("wrong field type", col, f"field '{col}' must be a time in seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise BadRow("wrong field type", col, f"field '{col}' must be a time of at least 0 seconds, got {value!r}")
    return seconds


def clip_options(row: dict[str, Any], m: Mapping) -> dict[str, float]:
    """A video or audio item's clip window from the row's optional ``start`` / ``end`` columns (seconds);
    empty when the row gives neither (the whole file)."""
    out: dict[str, float] = {}
    for key in ("start", "end"):
        col = m.columns[key]
        value = row.get(col)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        out[key] = _seconds(value, col)
    if "start" in out and "end" in out and out["end"] <= out["start"]:
        raise BadRow("empty clip window", m.columns["end"],
                     f"clip window [{out['start']:g}, {out['end']:g}) s is empty: '{m.columns['end']}' must be after "
                     f"'{m.columns['start']}'")
    return out


def media_entry(name: str, ref: str, field_name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One item of a user message's ``media`` (``options`` only when the row gives some, e.g. a clip window)."""
    entry: dict[str, Any] = {"modality": name, "ref": ref, "field": field_name}
    if options:
        entry["options"] = dict(options)
    return entry


def tags_in(text: str) -> list[str]:
    """The modality of each media tag in ``text``, in the order the tags appear."""
    found = []
    for name, modality in MODALITIES.items():
        at = text.find(modality.tag)
        while at != -1:
            found.append((at, name))
            at = text.find(modality.tag, at + len(modality.tag))
    return [name for _, name in sorted(found)]


def check_conversation(conv: Conversation, field_name: str) -> Conversation:
    """Enforce: optional system first, then user/assistant alternating, ending on assistant."""
    body = conv[1:] if conv and conv[0]["role"] == "system" else conv
    if not body:
        raise BadRow("empty conversation", field_name, "conversation has no user/assistant messages")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise BadRow(
                "roles do not alternate",
                field_name,
                f"message {i + (len(conv) - len(body))} has role '{msg['role']}', expected '{expected}'",
            )
    if body[-1]["role"] != "assistant":
        raise BadRow("ends on user turn", field_name, "conversation ends on a user turn (nothing to train on)")
    return conv


def _with_system(system: Any, col: str, messages: Conversation) -> Conversation:
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages
    return [{"role": "system", "content": _text(system, col)}, *messages]


def convert_alpaca(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    instruction = _text(_get(row, m, "instruction", required=True), m.columns["instruction"])
    extra = row.get(m.columns["input"])
    output = _text(_get(row, m, "output", required=True), m.columns["output"])
    prompt = instruction if not extra else f"{instruction}\n\n{_text(extra, m.columns['input'])}"
    messages: Conversation = []
    history = row.get(m.columns["history"]) or []
    if not isinstance(history, list):
        raise BadRow("wrong field type", m.columns["history"], "history must be a list of [instruction, response] pairs")
    for pair in history:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise BadRow("wrong field type", m.columns["history"], "history must be a list of [instruction, response] pairs")
        messages += [{"role": "user", "content": _text(pair[0], m.columns["history"])},
                     {"role": "assistant", "content": _text(pair[1], m.columns["history"])}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    conv = _with_system(row.get(m.columns["system"]), m.columns["system"], messages)
    return [check_conversation(conv, m.columns["output"])]


def convert_messages(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    """sharegpt / vicuna / openai: a list of {role, content} objects under one column."""
    col = m.columns["messages"]
    items = row.get(col)
    if items is None:
        raise BadRow("missing field", col, f"required field '{col}' is missing")
    if not isinstance(items, list):
        raise BadRow("wrong field type", col, f"field '{col}' must be a list of messages")
    if not items:
        raise BadRow("empty conversation", col, "conversation is empty")
    lookup = m.role_lookup()
    role_key, content_key = m.columns["role"], m.columns["content"]
    conv: Conversation = []
    for i, item in enumerate(items):
        where = f"{col}[{i}]"
        if not isinstance(item, dict) or role_key not in item:
            raise BadRow("missing field", f"{where}.{role_key}", f"message {i} has no '{role_key}'")
        if content_key not in item or item[content_key] is None:
            raise BadRow("missing field", f"{where}.{content_key}", f"message {i} has no '{content_key}'")
        role = lookup.get(item[role_key])
        if role is None:
            raise BadRow(
                "unknown role", f"{where}.{role_key}",
                f"unknown role '{item[role_key]}' (known: {sorted(lookup)}; map it under 'roles')",
            )
        conv.append({"role": role, "content": _text(item[content_key], f"{where}.{content_key}")})
    if conv[0]["role"] != "system":
        conv = _with_system(row.get(m.columns["system"]), m.columns["system"], conv)
    return [check_conversation(conv, col)]


def convert_dolly(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    instruction = _text(_get(row, m, "instruction", required=True), m.columns["instruction"])
    context = row.get(m.columns["context"])
    response = _text(_get(row, m, "response", required=True), m.columns["response"])
    prompt = instruction if not context else f"{instruction}\n\n{_text(context, m.columns['context'])}"
    return [[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]]


def _llava_media(row: dict[str, Any], m: Mapping, name: str) -> tuple[list[str], list[str]]:
    """The references of one modality's column of a LLaVA row and the field each came from (absent: none)."""
    col = m.columns[name]
    if "{" in col:  # a pattern over the row's fields: one item per row
        ref, field_name = media_ref(row, m, name)
        return [ref], [field_name]
    value = row.get(col)
    refs = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(refs, list) or not all(isinstance(p, str) and p.strip() for p in refs):
        raise BadRow("wrong field type", col, f"field '{col}' must be a path or a list of paths")
    return refs, [col] if isinstance(value, str) else [f"{col}[{k}]" for k in range(len(refs))]


def convert_llava(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    """LLaVA JSON: sharegpt-style ``conversations`` plus a column per modality (``image``, ``video``,
    ``audio``: one path, a list, or absent), as LLaVA, LLaVA-Video and Video-ChatGPT's training files.

    Each modality's tags (``<image>``, ``<video>``, ``<audio>``) must match its items in number and sit in
    user turns; each message that contains tags gets the ``media`` of its tags, in the order of the tags
    (chat templates ignore the extra key). As in LLaVA, the tag of a row's single item is moved to the
    start of its turn.
    """
    media = {name: _llava_media(row, m, name) for name in MEDIA_COLUMNS}
    conv = convert_messages(row, m)[0]
    for name, (refs, _) in media.items():
        tag = MODALITIES[name].tag
        tags = sum(msg["content"].count(tag) for msg in conv)
        if tags != len(refs):
            raise BadRow(f"{name} tag count mismatch", m.columns["messages"],
                         f"{tags} {tag} tag(s) in the conversation but {len(refs)} {name}(s) in '{m.columns[name]}'")
    single = sum(len(refs) for refs, _ in media.values()) == 1
    used = dict.fromkeys(media, 0)
    for i, msg in enumerate(conv):
        found = tags_in(msg["content"])
        if not found:
            continue
        if msg["role"] != "user":
            modality = MODALITIES[found[0]]
            raise BadRow(f"{modality.name} tag outside a user turn", f"{m.columns['messages']}[{i}]",
                         f"{modality.tag} in a {msg['role']} message; {modality.plural} belong to user turns")
        content = msg["content"]
        if single:
            tag = MODALITIES[found[0]].tag
            content = tag + "\n" + content.replace(tag, "").strip()
        entries = []
        for name in found:
            refs, fields = media[name]
            entries.append(media_entry(name, refs[used[name]], fields[used[name]]))
            used[name] += 1
        conv[i] = {**msg, "content": content, "media": entries}
    return [conv]


def convert_videochat(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    """VideoChat / Video-LLaMA instruction rows ``{"video", "QA": [{"i", "q", "a"}, ...]}`` -> one multi-turn
    conversation; a row without ``QA`` but with its own ``q`` / ``a`` is one pair (Video-ChatGPT's
    VideoInstruct100K: ``{"video_id", "q", "a"}``, with ``video: "{video_id}.mp4"``).

    The ``<video>`` tag opens the first user turn, followed by ``\n`` and the first question (Video-LLaMA's
    convention; a first question that already holds the tag is kept as written; an empty first question
    leaves the tag alone, as VideoChat's description rows). The first item's instruction ``i``, when not
    empty, is the system message (as VideoChat2), unless the row has a ``system`` column. Optional row-level
    ``start`` / ``end`` (seconds) become the item's clip window (``options``).
    """
    c = m.columns
    video = MODALITIES["video"]
    ref, video_field = media_ref(row, m, "video")
    options = clip_options(row, m)
    qa = row.get(c["qa"])
    if qa is None and row.get(c["question"]) is not None:
        turns = [(row, "")]
    else:
        if qa is None:
            raise BadRow("missing field", c["qa"], f"required field '{c['qa']}' is missing (a list of "
                         f"{{'{c['question']}', '{c['answer']}'}} objects, or '{c['question']}' and "
                         f"'{c['answer']}' on the row)")
        if not isinstance(qa, list):
            raise BadRow("wrong field type", c["qa"], f"field '{c['qa']}' must be a list of "
                         f"{{'{c['question']}', '{c['answer']}'}} objects, got {type(qa).__name__}")
        if not qa:
            raise BadRow("empty conversation", c["qa"], f"field '{c['qa']}' is an empty list")
        turns = [(item, f"{c['qa']}[{k}].") for k, item in enumerate(qa)]
    system, system_col = row.get(c["system"]), c["system"]
    messages: Conversation = []
    for k, (item, prefix) in enumerate(turns):
        if not isinstance(item, dict):
            raise BadRow("wrong field type", prefix.rstrip("."), f"field '{prefix.rstrip('.')}' must be an object "
                         f"with '{c['question']}' and '{c['answer']}', got {type(item).__name__}")
        q_col, a_col = prefix + c["question"], prefix + c["answer"]
        question, answer = item.get(c["question"]), item.get(c["answer"])
        if question is None or (k and isinstance(question, str) and not question.strip()):
            raise BadRow("missing field", q_col, f"required field '{q_col}' is missing or empty")
        question = _text(question, q_col)
        if answer is None or (isinstance(answer, str) and not answer.strip()):
            raise BadRow("missing field", a_col, f"required field '{a_col}' is missing or empty")
        answer = _text(answer, a_col)
        tags = question.count(video.tag)
        if tags > (0 if k else 1):
            raise BadRow("video tag count mismatch", q_col,
                         f"{tags} {video.tag} tag(s) in '{q_col}'; the row has one video, its tag opens the first turn")
        if k == 0:
            instruction = item.get(c["instruction"])
            if system is None and isinstance(instruction, str) and instruction.strip():
                system, system_col = instruction, prefix + c["instruction"]
            content = question if tags else video.tag + ("\n" + question.strip() if question.strip() else "")
            messages.append({"role": "user", "content": content,
                             "media": [media_entry(video.name, ref, video_field, options)]})
        else:
            messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    conv = _with_system(system, system_col, messages)
    return [check_conversation(conv, c["qa"])]


def _verdict(value: Any, col: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("yes", "no", "true", "false"):
        return value.strip().lower() in ("yes", "true")
    raise BadRow("wrong field type", col, f"field '{col}' must be true/false or \"yes\"/\"no\", got {value!r}")


def convert_self_correction(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    """question -> one assistant turn: initial answer (untrained), verification and revision (trained)."""
    c = m.columns
    question = _text(_get(row, m, "question", required=True), c["question"])
    initial = _text(_get(row, m, "initial_answer", required=True), c["initial_answer"])
    correct = _verdict(_get(row, m, "correct", required=True), c["correct"])
    reason = row.get(c["reason"])
    revised = None
    if not correct:
        revised = _text(_get(row, m, "revised_answer", required=True), c["revised_answer"])
    parts = self_correction_parts(initial, correct, None if reason is None else _text(reason, c["reason"]), revised)
    answer = {"role": "assistant", "content": "".join(p["text"] for p in parts), "parts": parts}
    conv = _with_system(row.get(c["system"]), c["system"], [{"role": "user", "content": question}, answer])
    return [check_conversation(conv, c["question"])]


RowConverter = Callable[[dict[str, Any], Mapping], list[Conversation]]
ROW_CONVERTERS: dict[str, RowConverter] = {
    "alpaca": convert_alpaca,
    "sharegpt": convert_messages,
    "vicuna": convert_messages,
    "openai": convert_messages,
    "dolly": convert_dolly,
    "llava": convert_llava,
    "videochat": convert_videochat,
    "self_correction": convert_self_correction,
}


# --- OASST: message trees, one row per message (flat) or one row per tree (nested) ---


@dataclass
class OasstNode:
    role: str
    text: str
    rank: float
    children: list["OasstNode"] = field(default_factory=list)


def oasst_threads(root: OasstNode, best_only: bool) -> Iterator[Conversation]:
    """Root-to-leaf threads that end on an assistant message.

    With ``best_only`` each step follows the best-ranked reply (rank 0 is best;
    unranked replies come last), giving one thread per tree.
    """

    def walk(node: OasstNode, prefix: Conversation) -> Iterator[Conversation]:
        path = [*prefix, {"role": node.role, "content": node.text}]
        children = sorted(node.children, key=lambda c: c.rank)
        if best_only:
            children = children[:1]
        if not children:
            if node.role == "assistant":
                yield path
            return
        for child in children:
            yield from walk(child, path)

    yield from walk(root, [])


def oasst_nested_tree(row: dict[str, Any], m: Mapping) -> OasstNode:
    """The OASST export layout: {"prompt": {text, role, replies: [...]}}."""
    lookup = m.role_lookup()

    def build(obj: Any, where: str) -> OasstNode:
        if not isinstance(obj, dict) or "text" not in obj or "role" not in obj:
            raise BadRow("missing field", where, f"'{where}' needs 'text' and 'role'")
        role = lookup.get(obj["role"])
        if role is None:
            raise BadRow("unknown role", f"{where}.role", f"unknown role '{obj['role']}'")
        rank = obj.get("rank")
        node = OasstNode(role, _text(obj["text"], f"{where}.text"), float("inf") if rank is None else float(rank))
        node.children = [build(c, f"{where}.replies[{i}]") for i, c in enumerate(obj.get("replies") or [])]
        return node

    return build(row.get("prompt"), "prompt")


def oasst_flat_forest(rows: Iterable[tuple[str, dict[str, Any]]], m: Mapping) -> tuple[list[OasstNode], list[tuple[str, BadRow]]]:
    """Rebuild trees from flat message rows (the Hugging Face oasst1/oasst2 layout).

    Returns the roots and the rows that could not be placed (with where + why).
    """
    c = m.columns
    lookup = m.role_lookup()
    nodes: dict[str, OasstNode] = {}
    parent_of: dict[str, str | None] = {}
    where_of: dict[str, str] = {}
    problems: list[tuple[str, BadRow]] = []
    for where, row in rows:
        try:
            msg_id = row.get(c["id"])
            if msg_id is None:
                raise BadRow("missing field", c["id"], f"required field '{c['id']}' is missing")
            text = _text(_get(row, m, "text", required=True), c["text"])
            role = lookup.get(row.get(c["role"]))
            if role is None:
                raise BadRow("unknown role", c["role"], f"unknown role '{row.get(c['role'])}'")
        except BadRow as bad:
            problems.append((where, bad))
            continue
        rank = row.get(c["rank"])
        nodes[msg_id] = OasstNode(role, text, float("inf") if rank is None else float(rank))
        parent_of[msg_id] = row.get(c["parent"])
        where_of[msg_id] = where
    roots: list[OasstNode] = []
    for msg_id, parent in parent_of.items():
        if parent is None:
            roots.append(nodes[msg_id])
        elif parent in nodes:
            nodes[parent].children.append(nodes[msg_id])
        else:
            problems.append((where_of[msg_id], BadRow("orphan message", c["parent"], f"parent '{parent}' not found")))
    return roots, problems
