"""Batched continuation of rendered prompts, for data builders and evaluations.

Prompts are already-rendered text (chat template applied, possibly with a
started assistant answer), so a caller can *prefill* part of an answer and let
the model continue. Decoding is mmtune's one batched loop
(``mmtune.generation.decoding.decode_batch``), so a proxy-tuned model works
here too. Each call is seeded with ``opts.seed``, so a batch gives the same
text whether or not the job was interrupted before it.
"""

from __future__ import annotations

import torch

from mmtune.generation.decoding import as_source, decode_batch, device_of, pad_id_of, source_stop_ids
from mmtune.generation.options import GenerationOptions


@torch.no_grad()
def complete_batch(model_or_source, tokenizer, prompts: list[str], opts: GenerationOptions) -> list[str]:
    """The model's continuation of each prompt (special tokens dropped, outer whitespace kept)."""
    source = as_source(model_or_source)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    generator = torch.Generator(device=device_of(source)).manual_seed(opts.seed)
    tokens = decode_batch(source, ids, opts, stop_ids=source_stop_ids(source, tokenizer),
                          pad_id=pad_id_of(tokenizer), generator=generator)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
