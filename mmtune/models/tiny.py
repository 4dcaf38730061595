"""A tiny random Llama built from a config: for tests, benchmarks and smoke runs without real weights.

It goes through the same loading code as a real model (``save_pretrained``,
then ``from_pretrained``), only small: 2 layers, width 64, any tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_llama(out: Path, tokenizer, *, max_positions: int = 1024, seed: int = 0,
                     extra_vocab: int = 0, tie_word_embeddings: bool = True, initializer_range: float = 0.02) -> Path:
    """Write a random 2-layer, 64-wide ``LlamaForCausalLM`` and ``tokenizer`` to ``out``.

    ``extra_vocab`` adds unused output rows after the tokenizer's vocabulary
    (as padded checkpoints have). Untied embeddings with a larger
    ``initializer_range`` give varied, well-separated next-token choices, which
    decoding tests need (tied small weights mostly repeat the input token).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer) + extra_vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        tie_word_embeddings=tie_word_embeddings, initializer_range=initializer_range, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)
