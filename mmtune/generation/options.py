"""Decoding options and stop tokens: the one home of generation defaults."""

from __future__ import annotations

from dataclasses import dataclass


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


BATCH_SIZE = 8
"""Prompts decoded together by ``mmtune generate`` / ``mmtune eval`` (left-padded)."""
