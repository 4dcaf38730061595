"""Chat with a model: one-shot or interactive, streaming tokens as they are generated.

The prompt is built with the tokenizer's chat template, which for a model
trained by mmtune is the template it was trained with (saved in ``final/``).
A multimodal model takes images: the first user turn gets one ``<image>`` tag
per image (unless the text places them), expanded exactly as in training.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from threading import Thread

import torch

from mmtune.data.formats import Conversation
from mmtune.errors import ConfigError
from mmtune.vision.images import IMAGE_TAG, ImageProblem, load_rgb
from mmtune.vision.model import MultimodalLM


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
    """Generate the assistant's reply to ``messages``; ``stream(text)`` receives pieces as they come.

    ``model`` may also be a :class:`mmtune.generation.proxy.ProxyTuned`, which decodes with its own loop.
    """
    from transformers import TextIteratorStreamer

    from mmtune.generation.proxy import ProxyTuned

    if isinstance(model, ProxyTuned):
        from mmtune.generation.decoding import stream_reply

        if any(m.get("images") for m in messages):
            raise ConfigError("proxy tuning is text-only; it cannot take --image")
        return stream_reply(model, tokenizer, messages, opts, stream)

    device = next(model.parameters()).device
    enc = encode_chat(model, tokenizer, messages)
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
        # A text LM returns prompt + reply; MultimodalLM generates from embeddings and returns the reply only.
        reply = out[0] if isinstance(model, MultimodalLM) else out[0, enc["input_ids"].shape[1] :]
        return tokenizer.decode(reply, skip_special_tokens=True).strip()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = Thread(target=model.generate, kwargs={**kwargs, "streamer": streamer}, daemon=True)
    thread.start()
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        stream(piece)
    thread.join()
    return "".join(pieces).strip()


def with_images(messages: Conversation, images: list[str]) -> Conversation:
    """Attach image paths to the first user turn, adding tags in front unless the text has them."""
    if not images:
        return messages
    out = [dict(m) for m in messages]
    first = next(m for m in out if m["role"] == "user")
    tags = first["content"].count(IMAGE_TAG)
    if tags == 0:
        first["content"] = IMAGE_TAG * len(images) + "\n" + first["content"]
    elif tags != len(images):
        raise ConfigError(f"{tags} {IMAGE_TAG} tag(s) in the prompt but {len(images)} image(s) given")
    first["images"] = list(images)
    return out


def encode_chat(model, tokenizer, messages: Conversation) -> dict:
    """input_ids / attention_mask (and pixel_values for a multimodal model) of the generation prompt."""
    if not isinstance(model, MultimodalLM):
        if any(m.get("images") for m in messages):
            raise ConfigError("this model has no image encoder; it cannot take --image")
        return dict(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True))
    from mmtune.data.tokenize import encode_prompt

    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([encode_prompt(tokenizer, text, model.num_image_tokens)])
    paths = [p for m in messages for p in m.get("images", ())]
    enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if paths:
        try:
            enc["pixel_values"] = torch.stack([model.transform(load_rgb(p)) for p in paths])
        except ImageProblem as exc:
            raise ConfigError(exc.detail) from None
    return enc


def run_chat(model, tokenizer, prompt: str | None, opts: GenerationOptions, *, system: str | None = None,
             images: list[str] | None = None) -> int:
    history: Conversation = [{"role": "system", "content": system}] if system else []
    pending_images = list(images or [])

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if prompt is not None:
        messages = with_images([*history, {"role": "user", "content": prompt}], pending_images)
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
        history = with_images(history, pending_images)
        pending_images = []
        if interactive:
            sys.stdout.write("assistant> ")
        reply = generate_reply(model, tokenizer, history, opts, stream=write)
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})
    return 0
