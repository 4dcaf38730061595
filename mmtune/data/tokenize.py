"""Conversation -> token ids + a per-token "trained" mask, with truncation.

Each segment from :func:`split_segments` is tokenized on its own (no special
tokens added: the template writes them), so the tokens fed up to an assistant
turn are exactly the tokens the model sees at inference for that history. The
segments of many conversations are tokenized in one batched call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtune.data.templates import Segment


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: the token is a training target
    truncated: bool


def encode_segments(
    tokenizer,
    conversations: list[list[Segment]],
    *,
    max_length: int,
    train_on_prompt: bool = False,
) -> list[Encoded]:
    """Tokenize the segments of many conversations in one batched call, then truncate."""
    texts = [s.text for segs in conversations for s in segs]
    ids_flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    out: list[Encoded] = []
    k = 0
    for segs in conversations:
        ids_parts, mask_parts = [], []
        for seg in segs:
            ids = ids_flat[k]
            k += 1
            ids_parts.append(np.asarray(ids, dtype=np.int32))
            mask_parts.append(np.full(len(ids), seg.trained or train_on_prompt, dtype=bool))
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        mask = np.concatenate(mask_parts) if mask_parts else np.zeros(0, bool)
        out.append(Encoded(ids[:max_length], mask[:max_length], len(ids) > max_length))
    return out


def boundary_mismatches(tokenizer, conversation, encoded: Encoded) -> list[int]:
    """Assistant turns where the training tokens before the answer differ from the inference prompt.

    Segment-wise tokenization equals whole-prompt tokenization when turn
    boundaries fall on token boundaries (true for templates whose turns end in
    special tokens). Checked on the first sample of each dataset, because a
    mismatch means the model is trained on token sequences it never sees at
    inference.
    """
    starts = [i for i in range(1, len(encoded.trained)) if encoded.trained[i] and not encoded.trained[i - 1]]
    turns = [i for i, m in enumerate(conversation) if m["role"] == "assistant"]
    bad = []
    for start, turn in zip(starts, turns):
        prompt = tokenizer.apply_chat_template(conversation[:turn], add_generation_prompt=True, tokenize=False)
        if tokenizer(prompt, add_special_tokens=False)["input_ids"] != encoded.input_ids[:start].tolist():
            bad.append(turn)
    return bad
