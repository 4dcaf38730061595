"""Conversation -> token ids + a per-token "trained" mask, with truncation.

Each segment from :func:`split_segments` is tokenized on its own (no special
tokens added: the template writes them), so the tokens fed up to an assistant
turn are exactly the tokens the model sees at inference for that history. The
segments of many conversations are tokenized in one batched call.

Image tags (``<image>``) in the text become ``image_tokens`` placeholder ids
each (the connector's output length), so lengths, packing and truncation all
count image tokens after expansion. Truncation never cuts through an image:
it cuts before that image instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtune.data.templates import Segment
from mmtune.errors import DataError
from mmtune.vision.images import IMAGE_PLACEHOLDER_ID, IMAGE_TAG


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: the token is a training target
    truncated: bool
    images: int = 0
    """Images whose placeholder tokens are (all) in ``input_ids``."""
    images_cut: int = 0
    """Images removed by truncation."""


def encode_segments(
    tokenizer,
    conversations: list[list[Segment]],
    *,
    max_length: int,
    train_on_prompt: bool = False,
    image_tokens: int = 0,
) -> list[Encoded]:
    """Tokenize the segments of many conversations in one batched call, then truncate.

    With ``image_tokens`` > 0 every ``<image>`` tag becomes that many
    :data:`IMAGE_PLACEHOLDER_ID` tokens, never trained.
    """
    pieces = [_pieces(s.text, image_tokens) for segs in conversations for s in segs]
    texts = [t for parts in pieces for t in parts]
    ids_flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    placeholder = np.full(image_tokens, IMAGE_PLACEHOLDER_ID, dtype=np.int32)
    out: list[Encoded] = []
    k = p = 0
    for segs in conversations:
        ids_parts, mask_parts, image_starts = [], [], []
        length = 0
        for seg in segs:
            parts = pieces[p]
            p += 1
            if len(parts) > 1 and seg.trained:
                raise DataError(f"{IMAGE_TAG} inside a trained answer; images belong to user turns",
                                reason="image tag in answer")
            for j in range(len(parts)):
                if j:  # an image between two text pieces
                    image_starts.append(length)
                    ids_parts.append(placeholder)
                    mask_parts.append(np.zeros(image_tokens, dtype=bool))
                    length += image_tokens
                ids = np.asarray(ids_flat[k], dtype=np.int32)
                k += 1
                ids_parts.append(ids)
                mask_parts.append(np.full(len(ids), seg.trained or train_on_prompt, dtype=bool))
                length += len(ids)
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, bool)
        cut = max_length
        for start in image_starts:  # never keep part of an image
            if start < cut < start + image_tokens:
                cut = start
        kept = sum(1 for start in image_starts if start + image_tokens <= cut)
        out.append(Encoded(ids[:cut], mask[:cut], len(ids) > cut, kept, len(image_starts) - kept))
    return out


def encode_prompt(tokenizer, text: str, image_tokens: int) -> list[int]:
    """Token ids of a rendered prompt, each image tag expanded as in training."""
    return encode_segments(tokenizer, [[Segment(text, False)]], max_length=1 << 30,
                           image_tokens=image_tokens)[0].input_ids.tolist()


def _pieces(text: str, image_tokens: int) -> list[str]:
    """Text split around image tags (a text model keeps tags as plain text)."""
    return text.split(IMAGE_TAG) if image_tokens else [text]


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
        prompt = tokenizer.apply_chat_template(conversation[:turn], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if prompt_ids != encoded.input_ids[: len(prompt_ids)].tolist():
            bad.append(turn)
    return bad
