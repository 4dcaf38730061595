"""Conversation -> token ids + a per-token "trained" mask, with truncation.

Each segment from :func:`split_segments` is tokenized on its own (no special
tokens added: the template writes them), so the tokens fed up to an assistant
turn are exactly the tokens the model sees at inference for that history. The
segments of many conversations are tokenized in one batched call.

Media tags (``<image>``, and the tags of every other modality the model has a
branch for) become placeholder ids: the k-th tag of a conversation takes the
k-th :class:`MediaSlot` of that conversation, ``slot.tokens`` positions of
``slot.placeholder_id`` (the count comes from the model's branch and may
differ per item). Lengths, packing and truncation therefore count media
tokens after expansion. Truncation never cuts through an item: it cuts before
that item instead, and counts what it dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mmtune.data.templates import Segment, render
from mmtune.errors import DataError


@dataclass(frozen=True)
class MediaSlot:
    """The positions one media item takes in the token sequence."""

    tag: str
    """The item's tag in the text; empty for a companion item, whose positions follow the item before it."""
    placeholder_id: int
    tokens: int


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: the token is a training target
    truncated: bool
    media_kept: int = 0
    """Media items whose placeholder tokens are (all) in ``input_ids``: the first ``media_kept`` of the sample."""
    media_cut: int = 0
    """Media items removed by truncation (the last ones)."""


def tag_pattern(tags: Sequence[str]) -> re.Pattern | None:
    """A pattern splitting text around any of ``tags`` (kept as separate pieces), or None for no tags."""
    tags = sorted({t for t in tags if t}, key=len, reverse=True)  # companions have no tag of their own
    return re.compile("(" + "|".join(re.escape(t) for t in tags) + ")") if tags else None


def encode_segments(
    tokenizer,
    conversations: list[list[Segment]],
    *,
    max_length: int,
    train_on_prompt: bool = False,
    media: list[list[MediaSlot]] | None = None,
    tags: Sequence[str] = (),
) -> list[Encoded]:
    """Tokenize the segments of many conversations in one batched call, then truncate.

    ``tags``: the media tags the model expands (a text model keeps tags as
    plain text); ``media[i]``: conversation i's slots, in the order of its tags.
    """
    pattern = tag_pattern(tags)
    pieces = [pattern.split(s.text) if pattern else [s.text] for segs in conversations for s in segs]
    texts = [t for parts in pieces for t in parts[::2]]
    ids_flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: list[Encoded] = []
    k = p = 0
    for c, segs in enumerate(conversations):
        slots = media[c] if media is not None else []
        ids_parts, mask_parts, item_spans = [], [], []
        length = used_slots = 0
        for seg in segs:
            parts = pieces[p]
            p += 1
            if len(parts) > 1 and seg.trained:
                raise DataError(f"{parts[1]} inside a trained answer; media belong to user turns",
                                reason="media tag in answer")
            for j, part in enumerate(parts):
                if j % 2:  # a media tag between two text pieces
                    if used_slots >= len(slots) or slots[used_slots].tag != part:
                        raise DataError(f"the rendered conversation has {part} where its media list has "
                                        f"{_describe_slot(slots, used_slots)}; the chat template must keep "
                                        "every media tag of the user turns, in order", reason="media tags do not match")
                    start, used = length, 0
                    while True:  # the tag's item, then its companions (tagless: a video's sound track)
                        slot = slots[used_slots + used]
                        ids_parts.append(np.full(slot.tokens, slot.placeholder_id, dtype=np.int32))
                        mask_parts.append(np.zeros(slot.tokens, dtype=bool))
                        length += slot.tokens
                        used += 1
                        if used_slots + used >= len(slots) or slots[used_slots + used].tag:
                            break
                    item_spans.append((start, length - start, used))
                    used_slots += used
                    continue
                ids = np.asarray(ids_flat[k], dtype=np.int32)
                k += 1
                ids_parts.append(ids)
                mask_parts.append(np.full(len(ids), seg.trained or train_on_prompt, dtype=bool))
                length += len(ids)
        if used_slots != len(slots):
            tagged = sum(1 for slot in slots if slot.tag)
            raise DataError(f"the rendered conversation has {len(item_spans)} media tag(s) but {tagged} media "
                            "item(s); the chat template dropped some (the plain template keeps only <image> tags)",
                            reason="media tags do not match")
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, bool)
        cut = max_length
        for start, size, _ in item_spans:  # never keep part of an item (nor a video without its sound track)
            if start < cut < start + size:
                cut = start
        kept = sum(n for start, size, n in item_spans if start + size <= cut)
        out.append(Encoded(ids[:cut], mask[:cut], len(ids) > cut, kept, len(slots) - kept))
    return out


def _describe_slot(slots: list[MediaSlot], index: int) -> str:
    return slots[index].tag if index < len(slots) else "no more items"


def encode_prompt(tokenizer, text: str, slots: Sequence[MediaSlot] = ()) -> list[int]:
    """Token ids of a rendered prompt, each media tag expanded as in training."""
    return encode_segments(tokenizer, [[Segment(text, False)]], max_length=1 << 30, media=[list(slots)],
                           tags=[s.tag for s in slots])[0].input_ids.tolist()


def boundary_mismatches(tokenizer, conversation, encoded: Encoded) -> list[int]:
    """Assistant turns where the training tokens before the answer differ from the inference prompt.

    Segment-wise tokenization equals whole-prompt tokenization when turn
    boundaries fall on token boundaries (true for templates whose turns end in
    special tokens). Checked on the first sample of each dataset, because a
    mismatch means the model is trained on token sequences it never sees at
    inference.
    """
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    bad = []
    for turn in turns:
        # A prefix test, not "everything before the first trained token": with partial answer
        # masking an untrained part of the answer follows the prompt.
        prompt = render(tokenizer, conversation[:turn], add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if prompt_ids != encoded.input_ids[: len(prompt_ids)].tolist():
            bad.append(turn)
    return bad
