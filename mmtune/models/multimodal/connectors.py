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
Linear) N-1 times); ``qformer``, BLIP-2 / InstructBLIP's Q-Former on
transformers' ``InstructBlipQFormerModel`` (instruction-aware or not);
``perceiver``, Flamingo's resampler; and ``instruction_pool`` (attention
pooling of the features, queried from the instruction, in one layer).
"""

from __future__ import annotations

import abc
import re
from typing import Any

import torch
from torch import nn

from mmtune.config.media import ConnectorConfig
from mmtune.errors import ConfigError, ModelError
from mmtune.models.multimodal.qformer import QFORMER_BERT_BASE, build_query_transformer, query_outputs
from mmtune.models.multimodal.qformer_tokenizer import load_qformer_tokenizer
from mmtune.utils.imports import import_object



class Connector(nn.Module, abc.ABC):
    """Base class of connectors (``forward`` is abstract: a connector without it fails when built)."""

    wants_text: bool = False
    """True for connectors that condition on the instruction (they get ``text_ids`` / ``text_mask``)."""
    text_tokenizer: Any = None
    """The tokenizer of the instruction for a connector that reads it with its own (None: the LLM's)."""
    frame_wise: bool = False
    """On a video or audio branch: True runs the connector on each frame / clip (an item then takes
    ``frames x num_output_tokens``); False gives it all frames' features at once (``[B, S*N, D]``, with
    ``feature_mask`` where an item has fewer frames) and needs a fixed ``num_output_tokens``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    @abc.abstractmethod
    def forward(self, features: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, N, in_dim]`` -> ``[B, num_output_tokens(N), out_dim]``. A connector used across the frames of a
        video (not ``frame_wise``) also receives ``feature_mask`` ``[B, N]`` when some items have fewer frames."""


class MLPProjector(Connector):
    """``depth`` Linear layers with GELU between them (depth 1 = LLaVA's linear projector)."""

    frame_wise = True  # token by token: per frame is the same as all at once

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

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None, feature_mask=None):
        if feature_mask is not None:
            raise ModelError("instruction_pool cannot mask missing frames: sample the same number of frames "
                             "for every video (frames.mode uniform or headtail)")
        if text_embeds is None or text_mask is None:
            raise ValueError("instruction_pool needs the instruction (text_embeds and text_mask)")
        weights = text_mask.to(text_embeds.dtype)[..., None]
        instruction = (text_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B, out_dim]
        queries = self.queries[None] + self.from_instruction(instruction)[:, None]  # [B, Q, dim]
        pooled, _ = self.attention(queries, features, features, need_weights=False)
        return self.out(pooled)


class QFormerConnector(Connector):
    """BLIP-2 / InstructBLIP's Q-Former as a connector, on transformers' own ``InstructBlipQFormerModel``.

    What it computes (LAVIS ``blip2_vicuna_instruct.py``; transformers ``InstructBlipModel.forward``):

    - ``num_query_tokens`` learned queries (32 in the papers, initialised N(0, 0.02) as LAVIS does);
    - a BERT-style encoder over ``[queries; instruction tokens]``: the queries and the instruction share
      self-attention, and every ``cross_attention_frequency``-th layer the queries (only they) cross-attend to
      the image features;
    - only the query outputs go through ``language_projection`` into the LLM: ``num_query_tokens`` embeddings per
      image, at the image's place in the sequence.

    ``instruction_aware: false`` is BLIP-2's Q-Former: the queries alone, no text (transformers'
    ``InstructBlipQFormerModel`` with no ``input_ids`` computes what ``Blip2QFormerModel`` does; its unused word
    and position embeddings and the text feed-forwards are dropped, so nothing trainable goes without a gradient).

    The instruction reaches the Q-Former through its own BERT tokenizer (``tokenizer``: a hub name or directory,
    ``bert-base-uncased`` as published), which the data pipeline applies in DataLoader workers. With no BERT
    vocabulary offline, ``tokenizer: basic`` builds a small uncased WordPiece vocabulary in code (common English
    words, every ASCII character and its ``##`` continuation): enough for tiny recipes and tests.

    Parameter names follow transformers' InstructBLIP (``qformer.*``, ``query_tokens``,
    ``language_projection.*``), so export to and import from ``InstructBlipForConditionalGeneration`` map the
    connector's state dict without renaming.
    """

    def __init__(self, in_dim: int, out_dim: int, *, num_query_tokens: int = 32, instruction_aware: bool = True,
                 tokenizer: str = "bert-base-uncased", qformer: dict[str, Any] | None = None,
                 per_frame: bool = False):
        """``qformer``: ``InstructBlipQFormerConfig`` keys over BERT-base (``hidden_size``,
        ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``cross_attention_frequency``,
        dropouts ...). ``per_frame``: on a video branch, run on each frame (InstructBLIP-Video: ``frames x
        num_query_tokens`` positions); otherwise once over all frames (Video-LLaMA's video Q-Former)."""
        super().__init__(in_dim, out_dim)
        self.instruction_aware = instruction_aware
        self.wants_text = instruction_aware
        self.frame_wise = per_frame
        self.tokenizer_name = tokenizer if instruction_aware else None
        self.text_tokenizer = load_qformer_tokenizer(tokenizer) if instruction_aware else None
        vocab = len(self.text_tokenizer) if instruction_aware else None
        self.qformer, self.query_tokens = build_query_transformer(in_dim, num_query_tokens, qformer, vocab)
        self.language_projection = nn.Linear(self.query_tokens.shape[-1], out_dim)

    @property
    def num_query_tokens(self) -> int:
        return self.query_tokens.shape[1]

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.num_query_tokens

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None, feature_mask=None):
        if self.instruction_aware and (text_ids is None or text_mask is None):
            raise ModelError("the instruction-aware Q-Former needs the instruction's tokens (text_ids, "
                             "text_mask); they come from the data pipeline or generation.prompts")
        out = query_outputs(self.qformer, self.query_tokens, features, feature_mask=feature_mask,
                            text_ids=text_ids if self.instruction_aware else None, text_mask=text_mask)
        return self.language_projection(out)


class PerceiverResampler(Connector):
    """Flamingo's Perceiver resampler (transformers' Idefics implementation), then a linear map into the LLM.

    ``num_latents`` learned latents cross-attend, ``depth`` times, to the features concatenated with the
    latents (Flamingo's form), each block followed by a feed-forward of 4x width: a fixed ``num_latents``
    tokens per item whatever the number of features. Flamingo and Otter feed the latents to gated
    cross-attention layers; here they are prefix embeddings, the same contract as the Q-Former's.
    Defaults are OpenFlamingo's (depth 6, 8 heads of 64, 64 latents).
    """

    def __init__(self, in_dim: int, out_dim: int, *, depth: int = 6, heads: int = 8, dim_head: int = 64,
                 num_latents: int = 64):
        from transformers import IdeficsConfig
        from transformers.models.idefics.perceiver import IdeficsPerceiverResampler

        super().__init__(in_dim, out_dim)
        if min(depth, heads, dim_head, num_latents) < 1:
            raise ValueError("depth, heads, dim_head and num_latents must be >= 1")
        config = IdeficsConfig(perceiver_config={"qk_layer_norms_perceiver": False},
                               vision_config={"embed_dim": in_dim})
        self.resampler = IdeficsPerceiverResampler(config, in_dim, depth, heads, dim_head, num_latents)
        self.projection = nn.Linear(in_dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.resampler.n_latents

    def forward(self, features, text_ids=None, text_mask=None, text_embeds=None, feature_mask=None):
        if feature_mask is not None:
            raise ModelError("the perceiver resampler cannot mask missing frames: sample the same number of "
                             "frames for every video (frames.mode uniform or headtail)")
        return self.projection(self.resampler(features))


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
    elif cfg.kind == "qformer":
        builder = QFormerConnector
    elif cfg.kind == "perceiver":
        builder = PerceiverResampler
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
