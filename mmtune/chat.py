"""Chat with a model: one-shot or interactive, streaming tokens as they are generated.

The prompt is built with the tokenizer's chat template, which for a model
trained by mmtune is the template it was trained with (saved in ``final/``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from threading import Thread

import torch

from mmtune.data.formats import Conversation


@dataclass
class GenerationOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    seed: int = 0


def stop_token_ids(model, tokenizer) -> list[int]:
    """eos of the tokenizer and of the model's generation config (they can differ)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_reply(model, tokenizer, messages: Conversation, opts: GenerationOptions, *, stream=None) -> str:
    """Generate the assistant's reply to ``messages``; ``stream(text)`` receives pieces as they come."""
    from transformers import TextIteratorStreamer

    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    kwargs = dict(
        **enc,
        max_new_tokens=opts.max_new_tokens,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    if opts.temperature > 0:
        torch.manual_seed(opts.seed)
        kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    if stream is None:
        out = model.generate(**kwargs)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer}, daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        stream(piece)
    thread.join()
    return "".join(pieces).strip()


def run_chat(model, tokenizer, prompt: str | None, opts: GenerationOptions, *, system: str | None = None) -> int:
    history: Conversation = [{"role": "system", "content": system}] if system else []

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if prompt is not None:
        generate_reply(model, tokenizer, [*history, {"role": "user", "content": prompt}], opts, stream=write)
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
        if interactive:
            sys.stdout.write("assistant> ")
        reply = generate_reply(model, tokenizer, history, opts, stream=write)
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})
    return 0
