"""A hand-written batched decoding loop over one or more models that advance in lockstep.

Why not ``model.generate``: proxy tuning needs the next-token logits of three
models combined before sampling, and each model needs its own KV cache. One
loop serves the plain case (a single text or multimodal model) and the
combined case, so ``mmtune chat``, ``mmtune generate`` and ``mmtune eval``
decode the same way. Prompts are left-padded; every model gets the same
attention mask and position ids counted from each row's first real token, so
a padded row decodes like the same prompt alone. A multimodal model receives
its prompts' media on the first step (their embeddings fill the placeholder
positions and enter the KV cache); later steps feed generated tokens only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from mmtune.data.formats import Conversation
from mmtune.data.templates import render
from mmtune.errors import ModelError
from mmtune.generation.options import BATCH_SIZE, GenerationOptions, stop_token_ids
from mmtune.generation.prompts import Prompt, check_text_only, encode_conversation, media_inputs
from mmtune.modalities.base import MediaInputs
from mmtune.models.multimodal.model import MultimodalLM


def _cache_name() -> str:
    """The KV-cache argument and output field of transformers' models: ``cache`` since 5.2x, before ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


_CACHE = _cache_name()


@dataclass
class SingleModel:
    """The plain case: next-token logits are the model's own."""

    model: nn.Module

    @property
    def models(self) -> tuple[nn.Module, ...]:
        return (self.model,)

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return logits[0]


def as_source(model_or_source):
    """A model becomes a :class:`SingleModel`; anything with ``models`` and ``combine`` passes through.

    A combination of several models (proxy tuning) takes text models only.
    """
    is_source = hasattr(model_or_source, "combine") and hasattr(model_or_source, "models")
    source = model_or_source if is_source else SingleModel(model_or_source)
    if len(source.models) > 1 and any(isinstance(m, MultimodalLM) for m in source.models):
        raise ModelError("proxy tuning combines text models; a multimodal model decodes on its own")
    return source


def the_model(source) -> nn.Module:
    """The model of a single-model source (whose prompts may carry media)."""
    return source.models[0] if len(source.models) == 1 else None


def device_of(source) -> torch.device:
    return next(source.models[0].parameters()).device


def source_stop_ids(source, tokenizer) -> list[int]:
    """Stop tokens of every model involved (their eos may differ) plus the tokenizer's."""
    ids: set[int] = set()
    for model in source.models:
        ids.update(stop_token_ids(model, tokenizer))
    return sorted(ids)


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else pad


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape [B, T] with padding on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first real token (padding gets 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_next(logits: torch.Tensor, opts: GenerationOptions, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy when ``temperature == 0``, else temperature + nucleus (top-p) sampling."""
    if opts.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / opts.temperature
    if opts.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already cover top_p (the first one always stays)
        drop = probs.cumsum(-1) - probs >= opts.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def decode_batch(
    source,
    prompts: Sequence[Sequence[int]],
    opts: GenerationOptions,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    on_token: Callable[[list[int]], None] | None = None,
    media: dict[str, MediaInputs] | None = None,
    row_hook: Callable[[int, list[int], bool], bool] | None = None,
) -> list[list[int]]:
    """Generated token ids per prompt (stop token excluded).

    Every model of ``source`` keeps its own KV cache; all of them see the same
    tokens, mask and positions at every step, so the caches stay in lockstep.
    A model object named twice (e.g. base = anti-expert) runs once per step:
    same weights and same inputs give the same logits and cache.
    ``on_token(tokens_of_row_0)`` is called after each step (used for streaming).
    ``media``: the prompts' media, in placeholder order, for a multimodal model.
    ``row_hook(i, tokens_of_row_i, stopped)`` is called after each step for every row still running
    (``stopped``: it just met a stop token); returning True ends the row there, so a caller can apply its
    own stops per row (a stop string, a token budget smaller than ``opts.max_new_tokens``) and stream each row.
    """
    device = device_of(source)
    suppressed = _suppressed(source, "suppress_tokens")
    suppressed_first = _suppressed(source, "begin_suppress_tokens")
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = positions_of(mask)
    models, slot = _distinct(source.models)
    caches: list = [None] * len(models)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in prompts]
    step_ids = ids
    for _ in range(opts.max_new_tokens):
        logits = []
        for k, model in enumerate(models):
            extra = {"media": media} if isinstance(model, MultimodalLM) and caches[k] is None else {}
            res = model(input_ids=step_ids, attention_mask=mask, position_ids=positions,
                        **{_CACHE: caches[k]}, use_cache=True, **extra)
            caches[k] = getattr(res, _CACHE)
            logits.append(res.logits[:, -1, :].float())
        combined = source.combine([logits[k] for k in slot])
        for banned in (suppressed, suppressed_first if not any(out) else []):
            if banned:
                combined[:, [t for t in banned if t < combined.shape[-1]]] = float("-inf")
        next_ids = sample_next(combined, opts, generator)
        finished_now = torch.isin(next_ids, stop) if len(stop) else torch.zeros_like(done)
        for i in (~done).nonzero().flatten().tolist():
            stopped = bool(finished_now[i])
            if not stopped:
                out[i].append(int(next_ids[i]))
            if row_hook is not None and row_hook(i, out[i], stopped):
                finished_now[i] = True
        done |= finished_now
        if on_token is not None:
            on_token(out[0])
        if bool(done.all()):
            break
        step_ids = torch.where(done, torch.full_like(next_ids, pad_id), next_ids)[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    return out


def _suppressed(source, key: str) -> list[int]:
    """Token ids the models' generation configs never let be generated (e.g. an exported Llava's ``<image>``)."""
    ids: set[int] = set()
    for model in source.models:
        ids.update(getattr(model.generation_config, key, None) or [])
    return sorted(ids)


def _distinct(models: Sequence[nn.Module]) -> tuple[list[nn.Module], list[int]]:
    """The distinct model objects, and for each role the index of its object among them."""
    unique: list[nn.Module] = []
    slot = []
    for m in models:
        found = next((k for k, u in enumerate(unique) if u is m), None)
        if found is None:
            unique.append(m)
            found = len(unique) - 1
        slot.append(found)
    return unique, slot


def prompt_ids(tokenizer, conversation: Conversation) -> list[int]:
    """The chat-templated prompt for the next assistant turn, as token ids (a text model's)."""
    text = render(tokenizer, conversation, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_all(source, tokenizer, conversations: Sequence[Conversation],
               wheres: Sequence[str] | None = None) -> list[Prompt]:
    """Each conversation's generation prompt for ``source`` (media expanded for a multimodal model).

    ``wheres`` name the conversations in errors (a file and row); default ``conversation N``.
    """
    model = the_model(source)
    if model is None:
        check_text_only(conversations)
        return [Prompt(prompt_ids(tokenizer, conv)) for conv in conversations]
    wheres = wheres or [f"conversation {i + 1}" for i in range(len(conversations))]
    return [encode_conversation(model, tokenizer, conv, where=where) for conv, where in zip(conversations, wheres)]


def _media_of(source, tokenizer, prompts: Sequence[Prompt]) -> dict[str, MediaInputs] | None:
    return media_inputs(the_model(source), tokenizer, [item for p in prompts for item in p.media], device_of(source))


def generate_texts(
    model_or_source,
    tokenizer,
    conversations: Sequence[Conversation],
    opts: GenerationOptions,
    *,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    desc: str = "generating",
    wheres: Sequence[str] | None = None,
) -> list[str]:
    """Replies to many conversations, batched (longest-first for less padding), seeded, with a progress bar."""
    source = as_source(model_or_source)
    return replies_to_prompts(source, tokenizer, encode_all(source, tokenizer, conversations, wheres), opts,
                              batch_size=batch_size, progress=progress, desc=desc)


def replies_to_prompts(model_or_source, tokenizer, prompts: Sequence[Prompt], opts: GenerationOptions, *,
                       batch_size: int = BATCH_SIZE, progress: bool = True, desc: str = "generating") -> list[str]:
    """Replies to prompts already encoded (ids with media placeholders expanded, and their media).

    :func:`generate_texts` encodes conversations first; ``mmtune report`` hands the prompts of tokenized
    validation samples, so the model is asked exactly what it was trained on.
    """
    source = as_source(model_or_source)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    generator = torch.Generator(device=device_of(source)).manual_seed(opts.seed)
    stop, pad = source_stop_ids(source, tokenizer), pad_id_of(tokenizer)
    replies: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc=desc, unit=" prompts", disable=not progress or None) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = [prompts[i] for i in chunk]
            tokens = decode_batch(source, [p.ids for p in batch], opts, stop_ids=stop, pad_id=pad,
                                  generator=generator, media=_media_of(source, tokenizer, batch))
            for i, toks in zip(chunk, tokens):
                replies[i] = tokenizer.decode(toks, skip_special_tokens=True).strip()
            bar.update(len(chunk))
    return replies


def stream_reply(model_or_source, tokenizer, conversation: Conversation, opts: GenerationOptions,
                 stream: Callable[[str], None] | None = None) -> str:
    """One reply, handing ``stream`` each new piece of text as tokens arrive."""
    source = as_source(model_or_source)
    generator = torch.Generator(device=device_of(source)).manual_seed(opts.seed)
    shown = ""

    def emit(tokens: list[int]) -> None:
        nonlocal shown
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if text.startswith(shown) and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
            stream(text[len(shown):])
            shown = text

    prompt = encode_all(source, tokenizer, [conversation])[0]
    tokens = decode_batch(source, [prompt.ids], opts,
                          stop_ids=source_stop_ids(source, tokenizer), pad_id=pad_id_of(tokenizer),
                          generator=generator, on_token=emit if stream else None,
                          media=_media_of(source, tokenizer, [prompt]))[0]
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if stream and text.startswith(shown) and len(text) > len(shown):
        stream(text[len(shown):])
    return text.strip()


@torch.no_grad()
def sequence_logits(model_or_source, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    media: dict[str, MediaInputs] | None = None) -> torch.Tensor:
    """Combined logits [B, T, V] of a padded batch (one full forward per model, no cache)."""
    source = as_source(model_or_source)
    positions = positions_of(attention_mask)
    models, slot = _distinct(source.models)
    logits = [m(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                **({"media": media} if isinstance(m, MultimodalLM) else {})).logits.float()
              for m in models]
    return source.combine([logits[k] for k in slot])
