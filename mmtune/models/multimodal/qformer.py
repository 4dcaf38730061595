"""The Q-Former core shared by the ``qformer`` connector and the per-frame ``qformer`` piece.

Both are transformers' ``InstructBlipQFormerModel`` plus learned queries: a BERT-style encoder over
``[queries; instruction tokens]`` whose queries cross-attend to the media features every
``cross_attention_frequency``-th layer; only the query outputs are used. Without text (BLIP-2, Video-LLaMA's
Q-Formers) the word and position embeddings and the text feed-forwards are dropped, so nothing trainable goes
without a gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

QFORMER_BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                     "intermediate_size": 3072, "cross_attention_frequency": 2, "max_position_embeddings": 512}
"""The published Q-Former: BERT-base with cross-attention every 2 layers (``qformer`` options override it)."""


def build_query_transformer(in_dim: int, num_query_tokens: int, options: dict[str, Any] | None,
                            vocab_size: int | None) -> tuple[nn.Module, nn.Parameter]:
    """The Q-Former over features of width ``in_dim`` and its queries (N(0, 0.02), as LAVIS initialises them).

    ``vocab_size``: the instruction tokenizer's size, or None for a Q-Former that reads no text. ``options`` are
    ``InstructBlipQFormerConfig`` keys over BERT-base; unknown keys raise ValueError (transformers configs would
    keep them silently, so a typo would change nothing).
    """
    from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

    if num_query_tokens < 1:
        raise ValueError("num_query_tokens must be >= 1")
    options = {**QFORMER_BERT_BASE, **(options or {})}
    for fixed in ("encoder_hidden_size", "vocab_size"):
        if fixed in options:
            raise ValueError(f"qformer.{fixed} is set by mmtune (the encoder's width; the tokenizer's size)")
    known = InstructBlipQFormerConfig().to_dict()
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ValueError(f"qformer: unknown key(s) {unknown} (InstructBlipQFormerConfig keys: "
                         f"{', '.join(k for k in QFORMER_BERT_BASE)}, hidden_dropout_prob, ...)")
    try:
        config = InstructBlipQFormerConfig(**options, encoder_hidden_size=in_dim, vocab_size=vocab_size or 1)
    except TypeError as exc:
        raise ValueError(f"qformer: {exc}") from None
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"qformer.hidden_size {config.hidden_size} is not divisible by "
                         f"num_attention_heads {config.num_attention_heads}")
    qformer = InstructBlipQFormerModel(config)
    if vocab_size is None:  # BLIP-2: no text, so nothing that only text passes through is kept
        qformer.embeddings.word_embeddings = None
        qformer.embeddings.position_embeddings = None
        for layer in qformer.encoder.layer:
            layer.intermediate = layer.output = None
    query_tokens = nn.Parameter(torch.randn(1, num_query_tokens, config.hidden_size) * 0.02)
    return qformer, query_tokens


def query_outputs(qformer: nn.Module, query_tokens: torch.Tensor, features: torch.Tensor, *,
                  text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                  feature_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, N, D]`` features -> ``[B, Q, hidden]`` query outputs (with the instruction when ``text_ids`` given;
    ``feature_mask [B, N]``: 0 where a feature is padding, e.g. a missing frame)."""
    batch = features.shape[0]
    queries = query_tokens.expand(batch, -1, -1).to(features.dtype)
    if feature_mask is None:
        feature_mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
    if text_ids is not None:
        query_mask = torch.ones(queries.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        out = qformer(input_ids=text_ids, attention_mask=torch.cat([query_mask, text_mask], dim=1),
                      query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=feature_mask)
    else:
        out = qformer(input_ids=None, query_embeds=queries, encoder_hidden_states=features,
                      encoder_attention_mask=feature_mask)
    return out.last_hidden_state[:, :query_tokens.shape[1]]
