"""Dataset formats -> conversations.

Every format turns one raw row into zero or more *conversations*: lists of
``{"role": "system"|"user"|"assistant", "content": str}`` messages, which is
exactly what ``tokenizer.apply_chat_template`` takes. ``columns`` maps a
canonical field name to the file's column name and ``roles`` maps a canonical
role to the file's role name, so a dataset card adapts any file without code.

Problems raise :class:`BadRow` with a reason (used as the skip counter's key)
and the field; the reader adds file and row.

The task formats ``vqa`` and ``caption`` (InstructBLIP's instruction data)
also depend on the row's index and the dataset's draw options; their
converters are in ``task_formats.py`` (their column defaults are here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from mmtune.data.self_correction import self_correction_parts
from mmtune.modalities.image import IMAGE, IMAGE_TAG

Message = dict[str, Any]
"""``role`` and ``content``; a user turn with media tags adds ``media``: one ``{"modality", "ref", "field"}``
per tag, in the order of the tags (``ref`` as written in the row, ``field`` the column it came from). An
assistant message may add partial-answer-masking ``parts`` (see self_correction.py).

The task formats (``vqa``, ``caption``) add what evaluation needs and chat templates ignore: on the user
message ``template`` (the drawn template, ``"<index>: <text>"``); on the assistant message ``references``
(list[str]: every annotator's answer, repeats kept, or every caption of the image) and, for multiple-choice
rows, ``choices`` (list[str]) and ``correct_choice`` (int index into ``choices``, when the row gives it)."""
Conversation = list[Message]
CANONICAL_ROLES = ("system", "user", "assistant")


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
FORMAT_DEFAULTS["vicuna"] = FORMAT_DEFAULTS["sharegpt"]
FORMAT_DEFAULTS["llava"] = FormatSpec(
    {"id": "id", "image": "image", "messages": "conversations", "role": "from", "content": "value", "system": "system"},
    FORMAT_DEFAULTS["sharegpt"].roles,
)


def pattern_fields(pattern: str) -> list[str]:
    """The row fields an image pattern such as ``train2017/{image_id:012d}.jpg`` reads (ValueError if malformed)."""
    try:
        parsed = list(Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"column 'image': malformed pattern {pattern!r} ({exc})") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    if not names or not all(names):
        raise ValueError(f"column 'image': pattern {pattern!r} must name the row's fields, e.g. {{image_id}}")
    return [name.split(".")[0].split("[")[0] for name in names]


@dataclass
class Mapping:
    """Resolved column and role names for one dataset."""

    columns: dict[str, str]
    roles: dict[str, str]

    @classmethod
    def for_format(cls, fmt: str, columns: dict[str, str], roles: dict[str, str]) -> "Mapping":
        base = FORMAT_DEFAULTS[fmt]
        unknown = set(columns) - set(base.columns)
        if unknown:
            raise ValueError(f"unknown column field(s) for format '{fmt}': {sorted(unknown)}; valid: {sorted(base.columns)}")
        bad_roles = set(roles) - set(CANONICAL_ROLES)
        if bad_roles:
            raise ValueError(f"unknown role key(s) {sorted(bad_roles)}; valid: {list(CANONICAL_ROLES)}")
        if "image" in columns and "{" in columns["image"]:
            pattern_fields(columns["image"])
        return cls({**base.columns, **columns}, {**base.roles, **roles})

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


def convert_llava(row: dict[str, Any], m: Mapping) -> list[Conversation]:
    """LLaVA JSON: sharegpt-style ``conversations`` plus ``image`` (one path, a list, or absent).

    Each message that contains ``<image>`` tags gets the ``media`` of its
    tags, in order (chat templates ignore the extra key). As in LLaVA, a single
    image's tag is moved to the start of its turn.
    """
    image_col = m.columns["image"]
    value = row.get(image_col)
    images = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(images, list) or not all(isinstance(p, str) and p.strip() for p in images):
        raise BadRow("wrong field type", image_col, f"field '{image_col}' must be a path or a list of paths")
    conv = convert_messages(row, m)[0]
    tags = sum(msg["content"].count(IMAGE_TAG) for msg in conv)
    if tags != len(images):
        raise BadRow("image tag count mismatch", m.columns["messages"],
                     f"{tags} {IMAGE_TAG} tag(s) in the conversation but {len(images)} image(s) in '{image_col}'")
    used = 0
    for i, msg in enumerate(conv):
        count = msg["content"].count(IMAGE_TAG)
        if not count:
            continue
        if msg["role"] != "user":
            raise BadRow("image tag outside a user turn", f"{m.columns['messages']}[{i}]",
                         f"{IMAGE_TAG} in a {msg['role']} message; images belong to user turns")
        content = msg["content"]
        if len(images) == 1:
            content = IMAGE_TAG + "\n" + content.replace(IMAGE_TAG, "").strip()
        fields = [image_col] if isinstance(value, str) else [f"{image_col}[{k}]" for k in range(used, used + count)]
        media = [{"modality": IMAGE.name, "ref": ref, "field": f} for ref, f in zip(images[used:used + count], fields)]
        conv[i] = {**msg, "content": content, "media": media}
        used += count
    return [conv]


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
