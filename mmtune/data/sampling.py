"""Batched continuation of rendered prompts, for data builders and evaluations.

Prompts are already-rendered text (chat template applied, possibly with a
started assistant answer), so a caller can *prefill* part of an answer and let
the model continue. Left padding keeps every prompt's last token adjacent to
the generated ones; each batch is seeded, so a batch gives the same text
whether or not the job was interrupted before it.
"""

from __future__ import annotations

import torch

from mmtune.chat import GenerationOptions, stop_token_ids


@torch.no_grad()
def complete_batch(model, tokenizer, prompts: list[str], opts: GenerationOptions) -> list[str]:
    """The model's continuation of each prompt (special tokens dropped, outer whitespace kept)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    kwargs = dict(
        input_ids=enc["input_ids"].to(device),
        attention_mask=enc["attention_mask"].to(device),
        max_new_tokens=opts.max_new_tokens,
        eos_token_id=stop_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    if opts.temperature > 0:
        torch.manual_seed(opts.seed)
        kwargs.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out = model.generate(**kwargs)
    new = out[:, enc["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True)
