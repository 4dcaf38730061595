"""Chat with a model: one-shot or interactive, streaming tokens as they are generated.

The prompt is built with the tokenizer's chat template, which for a model
trained by mmtune is the template it was trained with (saved in ``final/``).
A multimodal model takes media: the first user turn gets one tag per item
(unless the text places them), expanded exactly as in training. Every model,
text, multimodal or proxy-tuned, decodes through the one batched loop of
``mmtune.generation.decoding``.
"""

from __future__ import annotations

import sys

from mmtune.data.formats import Conversation
from mmtune.data.media import attach_media
from mmtune.generation.decoding import stream_reply
from mmtune.generation.options import GenerationOptions


def generate_reply(model, tokenizer, messages: Conversation, opts: GenerationOptions, *, stream=None) -> str:
    """The assistant's reply to ``messages``; ``stream(text)`` receives pieces as they come.

    ``model`` may be a text or multimodal model, or a :class:`mmtune.generation.proxy.ProxyTuned`.
    """
    return stream_reply(model, tokenizer, messages, opts, stream)


def run_chat(model, tokenizer, prompt: str | None, opts: GenerationOptions, *, system: str | None = None,
             media: list[tuple[str, str]] | None = None) -> int:
    """One reply to ``prompt``, or an interactive session; ``media``: ``(modality, path)`` for the first turn."""
    history: Conversation = [{"role": "system", "content": system}] if system else []
    pending = list(media or [])

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if prompt is not None:
        messages = attach_media([*history, {"role": "user", "content": prompt}], pending)
        generate_reply(model, tokenizer, messages, opts, stream=write)
        sys.stdout.write("\n")
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("mmtune chat — empty line or Ctrl-D to quit, /reset to clear the history")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        if not line.strip():
            if interactive:
                break
            continue
        if line.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": line})
        history = attach_media(history, pending)
        pending = []
        if interactive:
            sys.stdout.write("assistant> ")
        reply = generate_reply(model, tokenizer, history, opts, stream=write)
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})
    return 0
