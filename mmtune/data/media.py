"""The media of a conversation: checked against its tags, resolved, and laid out as token slots.

Formats put ``{"modality", "ref", "field"}`` entries on user messages (see
``formats.Message``). Here, for a model with branches described by
``specs`` (modality name -> :class:`~mmtune.modalities.base.MediaInputSpec`),
each entry is resolved inside the dataset's media folder, header-checked by
its modality, and becomes a :class:`~mmtune.modalities.base.MediaItem` that
remembers where it came from; each item's token count comes from its branch.
"""

from __future__ import annotations

from pathlib import Path

from mmtune.data.formats import BadRow, Conversation
from mmtune.data.tokenize import MediaSlot
from mmtune.errors import ConfigError
from mmtune.modalities import MODALITIES
from mmtune.modalities.base import MediaInputSpec, MediaItem, MediaProblem


def media_tags(specs: dict[str, MediaInputSpec]) -> list[str]:
    """The tags a model with these branches expands (other tags stay plain text)."""
    return [spec.modality.tag for spec in specs.values()]


def strip_tags(text: str) -> str:
    """A user turn's text without any media tag: the instruction a connector reads."""
    for modality in MODALITIES.values():
        text = text.replace(modality.tag, " ")
    return " ".join(text.split())


def media_items_of(conv: Conversation, specs: dict[str, MediaInputSpec], *, root: Path | None, where: str,
                   dataset: str = "", owner: str = "") -> list[MediaItem]:
    """The checked media items of ``conv``, in the order of its messages' entries (formats write them in tag
    order; tokenization checks the two agree); a bad item raises :class:`BadRow`.

    ``root``: the folder references resolve in (no item may resolve outside
    it); None takes references as paths as given (chat, where the user names
    files directly). A modality the model has no branch for is a config
    error naming the ``dataset`` (or ``owner``: a file location, a prompt).
    """
    entries = [(i, entry) for i, msg in enumerate(conv) for entry in msg.get("media", ())]
    for _, entry in entries:
        if entry["modality"] not in specs:
            name = entry["modality"]
            noun = MODALITIES[name].plural if name in MODALITIES else name
            subject = f"dataset '{dataset}' has {noun}" if dataset else f"{owner + ': ' if owner else ''}{noun} given"
            raise ConfigError(f"{subject} but the model has no {name} branch (model.media.{name})")
    for name, spec in specs.items():
        tag = spec.modality.tag
        tags = sum(msg["content"].count(tag) for msg in conv)
        items = sum(1 for _, entry in entries if entry["modality"] == name)
        if tags != items:
            raise BadRow(f"{name} tag count mismatch", "conversation",
                         f"{tags} {tag} tag(s) in the text but {items} {spec.modality.plural}")
        if any(tag in msg["content"] for msg in conv if msg["role"] != "user"):
            raise BadRow(f"{name} tag outside a user turn", "conversation", f"{tag} outside a user turn")
    out = []
    for i, entry in entries:
        field = entry.get("field", entry["modality"])
        path, info = checked_path(entry, root)
        item = MediaItem(entry["modality"], str(path), dict(entry.get("options") or {}),
                         instruction=strip_tags(conv[i]["content"]), origin=f"{where}: field '{field}'", info=info,
                         field_name=field)
        out.append(item)
        companion = specs[item.modality].companion
        if companion is not None:  # a video's sound track for the audio branch, over the same clip window
            info = _checked(MODALITIES[companion], path, field)
            out.append(MediaItem(companion, item.path, dict(item.options), instruction=item.instruction,
                                 origin=f"{item.origin} (its {companion})", info=info, companion=True,
                                 field_name=field))
    return out


def checked_path(entry: dict, root: Path | None) -> tuple[Path, dict]:
    """An entry's file, resolved inside ``root`` (as given when None), and its header info; raises :class:`BadRow`."""
    modality = MODALITIES[entry["modality"]]
    field = entry.get("field", modality.name)
    try:
        path = modality.resolve(root, entry["ref"]) if root is not None else Path(entry["ref"]).expanduser().absolute()
    except MediaProblem as exc:
        raise BadRow(exc.reason, field, exc.detail) from None
    return path, _checked(modality, path, field)


def _checked(modality, path: Path, field: str) -> dict:
    try:
        return modality.check(path)
    except MediaProblem as exc:
        raise BadRow(exc.reason, field, exc.detail) from None


def media_slots(items: list[MediaItem], specs: dict[str, MediaInputSpec]) -> list[MediaSlot]:
    """Each item's tag, placeholder id and token count (from its branch), in order; an item the branch cannot
    take (a video with fewer frames than the branch samples) raises :class:`BadRow` naming its field."""
    slots = []
    for item in items:
        spec = specs[item.modality]
        try:
            tokens = spec.count(item)
        except MediaProblem as exc:
            raise BadRow(exc.reason, item.field_name or item.modality, f"{item.path}: {exc.detail}") from None
        slots.append(MediaSlot("" if item.companion else spec.modality.tag, spec.modality.placeholder_id, tokens))
    return slots


def attach_media(messages: Conversation, media: list[tuple[str, str]]) -> Conversation:
    """Attach ``(modality, path)`` items to the first user turn, adding their tags in front unless the text has them.

    Used by chat and generation, where files are named directly. With the
    tags already in the text, their number per modality must match.
    """
    if not media:
        return messages
    out = [dict(m) for m in messages]
    first = next(m for m in out if m["role"] == "user")
    for name in dict.fromkeys(modality for modality, _ in media):
        if name not in MODALITIES:
            raise ConfigError(f"unknown modality '{name}' (known: {', '.join(MODALITIES)})")
    counts = {name: first["content"].count(MODALITIES[name].tag) for name, _ in media}
    if not any(counts.values()):
        first["content"] = "".join(MODALITIES[name].tag for name, _ in media) + "\n" + first["content"]
    else:
        for name, count in counts.items():
            given = sum(1 for modality, _ in media if modality == name)
            if count != given:
                raise ConfigError(f"{count} {MODALITIES[name].tag} tag(s) in the prompt but {given} "
                                  f"{MODALITIES[name].plural} given")
    first["media"] = [*first.get("media", ()), *({"modality": name, "ref": str(path), "field": name}
                                                  for name, path in media)]
    return out


def with_resolved_media(conv: Conversation, root: Path) -> Conversation:
    """``conv`` with every media reference resolved inside ``root`` and header-checked (raises :class:`BadRow`).

    For conversations kept as conversations (evaluation), whose media are later
    taken as absolute paths.
    """
    return [{**msg, "media": [{**entry, "ref": str(checked_path(entry, root)[0])} for entry in msg["media"]]}
            if msg.get("media") else msg for msg in conv]
