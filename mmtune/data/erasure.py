"""Prompt erasure (Orca-2): train without the detailed system instruction that produced a sample.

A teacher answers well when told *how* (``"think step by step, then give the
number"``); the student should learn to choose that strategy itself. So at
training time the detailed system message is replaced by a generic one (or
removed, leaving the chat template's own default), and the erased text is kept
as the sample's metadata so ``mmtune data inspect`` can show both.

It works on converted conversations, so every format (text or multimodal)
gets it without format-specific code; only the system message is touched.
"""

from __future__ import annotations

import json
from typing import Any

from mmtune.config.schema import PromptErasure
from mmtune.data.formats import Conversation

ERASED_KEY = "erased_system"
"""Metadata key under which the erased system instruction is kept."""


def _as_text(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def erase_system_prompt(conv: Conversation, erasure: PromptErasure) -> tuple[Conversation, dict[str, str]]:
    """``conv`` with its system message replaced by ``erasure.replace_with`` (or dropped when null).

    Returns the new conversation and the sample's metadata: ``{ERASED_KEY: text}``
    when a system message was erased, else ``{}``. A conversation without a
    system message gets the generic one, so every sample of the dataset trains
    under the same instruction.
    """
    meta: dict[str, str] = {}
    body = conv
    if conv and conv[0]["role"] == "system":
        meta[ERASED_KEY] = _as_text(conv[0]["content"])
        body = conv[1:]
    if erasure.replace_with is None:
        return list(body), meta
    return [{"role": "system", "content": erasure.replace_with}, *body], meta
