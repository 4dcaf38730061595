"""Connectors: encoder features ``[B, N, D_in]`` -> LLM input embeddings ``[B, M, D_out]``.

The contract (:class:`Connector`): ``forward(features, ...)`` and
``num_output_tokens(num_input_tokens) -> M``. A projector keeps ``M = N``; a
resampler or Q-Former returns a fixed ``M`` whatever ``N`` is.

A connector may read the instruction (``wants_text = True``): for every media
item it then receives the text of the user turn that contains the item, as
``text_ids`` / ``text_mask`` ``[B, T]``. They are tokenized by the
connector's own ``text_tokenizer`` when it declares one (InstructBLIP's
Q-Former reads BERT tokens), else by the LLM's tokenizer, and then the
connector also receives ``text_embeds`` ``[B, T, D_out]``: the LLM's input
embeddings of those tokens.

Built-ins: ``linear`` and LLaVA's ``mlp{N}x_gelu`` (Linear, then (GELU,
Linear) N-1 times), and ``instruction_pool`` (attention pooling of the
features, queried from the instruction).
"""

from __future__ import annotations

import abc
import re
from typing import Any

import torch
from torch import nn

from mmtune.config.media import ConnectorConfig
from mmtune.errors import ConfigError
from mmtune.utils.imports import import_object


class Connector(nn.Module, abc.ABC):
    """Base class of connectors (``forward`` is abstract: a connector without it fails when built)."""

    wants_text: bool = False
    """True for connectors that condition on the instruction (they get ``text_ids`` / ``text_mask``)."""
    text_tokenizer: Any = None
    """The tokenizer of the instruction for a connector that reads it with its own (None: the LLM's)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    @abc.abstractmethod
    def forward(self, features: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, in_dim]`` -> ``[B, num_output_tokens(N), out_dim]``."""


class MLPProjector(Connector):
    """``depth`` Linear layers with GELU between them (depth 1 = LLaVA's linear projector)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2):
        super().__init__(in_dim, out_dim)
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*layers)
        self.depth = depth

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None):
        return self.layers(features)


class InstructionPooling(Connector):
    """Attention pooling of the features, queried from the instruction: ``num_queries`` tokens per item.

    The instruction's LLM embeddings are averaged over its tokens and projected
    onto every learned query, so what the connector extracts from the media
    depends on what the user asked (the idea of InstructBLIP's instruction-aware
    Q-Former, in one attention layer). It reads the instruction through the
    LLM's tokenizer and embeddings.
    """

    wants_text = True

    def __init__(self, in_dim: int, out_dim: int, num_queries: int = 8, dim: int = 256, heads: int = 4):
        super().__init__(in_dim, out_dim)
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.from_instruction = nn.Linear(out_dim, dim)
        self.attention = nn.MultiheadAttention(dim, heads, kdim=in_dim, vdim=in_dim, batch_first=True)
        self.out = nn.Linear(dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_queries

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None):
        if text_embeds is None or text_mask is None:
            raise ValueError("instruction_pool needs the instruction (text_embeds and text_mask)")
        weights = text_mask.to(text_embeds.dtype)[..., None]
        instruction = (text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, out_dim]
        queries = self.queries[None] + self.from_instruction(instruction)[:, None]  # [B, Q, dim]
        pooled, _ = self.attention(queries, features, features, need_weights=False)
        return self.out(pooled)


_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int, key: str) -> Connector:
    """A built-in connector by kind, or ``package.module:builder`` called with ``in_dim``, ``out_dim`` and options."""
    if cfg.kind == "linear":
        builder: Any = lambda in_dim, out_dim: MLPProjector(in_dim, out_dim, depth=1)  # noqa: E731
    elif match := _MLP.match(cfg.kind):
        depth = int(match.group(1))
        if depth < 1:
            raise ConfigError(f"{key}.kind: mlp{{N}}x_gelu needs N >= 1")
        builder = lambda in_dim, out_dim: MLPProjector(in_dim, out_dim, depth=depth)  # noqa: E731
    elif cfg.kind == "instruction_pool":
        builder = InstructionPooling
    else:
        builder = import_object(cfg.kind, f"{key}.kind")
    try:
        connector = builder(in_dim=in_dim, out_dim=out_dim, **cfg.options)
    except (TypeError, ValueError) as exc:  # wrong options, or a class that does not implement the contract
        raise ConfigError(f"{key}: cannot build '{cfg.kind}': {exc}") from None
    if not isinstance(connector, Connector):
        raise ConfigError(f"{key}.kind: '{cfg.kind}' built a {type(connector).__name__}, "
                          "not an mmtune.models.multimodal.connectors.Connector")
    return connector
