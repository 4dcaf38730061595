"""HINT's parameter generator: an encoded instruction -> adapter weights for every adapted LLM module.

Ivison et al.'s hypernetwork is a small decoder whose inputs are learned per-layer embeddings and whose
cross-attention reads the encoded instruction; linear heads turn each output into a layer's parameters.
Here each adapted module (a ``q_proj`` of layer 3, say) has one query: its layer's embedding plus its
kind's. The queries attend to each other and to the instruction through transformers-style decoder blocks
(``torch.nn.TransformerDecoder``), and one head per kind emits that module's ``A`` [r, in] and ``B``
[out, r]. Heads are shared across layers, so the generator's size grows with the model's width, not depth.

``B``'s head starts at zero, so before training the generated adapters change nothing (as LoRA starts
with B = 0) and the LLM's behaviour is the starting point; ``A``'s head is scaled so that ``A``'s entries
start with LoRA's usual variance (1 / in_features). Heads divide their weight term by their input width
(:class:`GeneratorHead`), so that a generated entry moves per step about as fast as a trained LoRA entry.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AdapterTarget:
    """One LLM module that receives generated adapter weights."""

    name: str
    """The module's path in the transformers model (``model.layers.3.self_attn.q_proj``), as peft names it."""
    layer: int
    kind: str
    """The module's own name (``q_proj``): modules of one kind share a head, so they share a shape."""
    in_features: int
    out_features: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PrefixShape:
    """The key/value prefix of every attention layer: ``tokens`` positions of ``kv_heads`` x ``head_dim``."""

    layers: int
    tokens: int
    kv_heads: int
    head_dim: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class GeneratedAdapters:
    """What ``K`` instructions generate: ``A[j]`` [K, r, in] and ``B[j]`` [K, out, r] per target ``j``, and
    optionally a prefix [K, layers, 2 (key, value), kv_heads, tokens, head_dim]."""

    A: list[torch.Tensor]
    B: list[torch.Tensor]
    prefix: torch.Tensor | None = None

    def select(self, k: int) -> "GeneratedAdapters":
        """The weights of instruction ``k`` alone (a batch of one)."""
        return GeneratedAdapters([a[k : k + 1] for a in self.A], [b[k : k + 1] for b in self.B],
                                 None if self.prefix is None else self.prefix[k : k + 1])


class GeneratorHead(nn.Module):
    """``W h / d + b``: a linear head whose weight term is divided by its input width ``d``.

    Why: every generated entry sums ``d`` weights, and Adam moves each weight by about the learning rate, in a
    coherent direction when the gradient is; a plain head would move a generated LoRA entry ``d`` times faster
    than LoRA's own entries move (lr 1e-3, d 256: 0.25 per step), which throws a pre-trained LLM off at once.
    Divided by ``d``, a generated entry moves about as fast as a LoRA entry trained directly; the bias, a part
    every task and layer of the kind shares, moves at the plain rate. (muP's output scaling, for the same reason.)
    """

    def __init__(self, width: int, out: int, *, std: float) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.randn(out, width) * std)
        self.bias = nn.Parameter(torch.zeros(out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(h, self.weight) / self.width + self.bias


class ParameterGenerator(nn.Module):
    def __init__(self, targets: list[AdapterTarget], *, instruction_dim: int, hidden_size: int, blocks: int,
                 heads: int, rank: int, prefix: PrefixShape | None = None) -> None:
        super().__init__()
        self.targets = list(targets)
        self.rank = rank
        self.prefix_shape = prefix
        self.kinds = sorted({t.kind for t in targets})
        shapes = {}
        for t in targets:
            if shapes.setdefault(t.kind, (t.in_features, t.out_features)) != (t.in_features, t.out_features):
                raise ValueError(f"hint.target_modules: '{t.kind}' modules differ in shape across layers "
                                 f"({shapes[t.kind]} vs {(t.in_features, t.out_features)}); they share one head")
        self.instruction_proj = nn.Sequential(nn.Linear(instruction_dim, hidden_size), nn.LayerNorm(hidden_size))
        n_layers = max([t.layer + 1 for t in targets] + [prefix.layers if prefix else 0])
        self.layer_embed = nn.Embedding(n_layers, hidden_size)
        # One query per adapted module (its layer's embedding + its kind's), then one per layer for the prefix.
        kinds = [*self.kinds, *(["prefix"] if prefix else [])]
        self.kind_embed = nn.Embedding(len(kinds), hidden_size)
        nn.init.normal_(self.layer_embed.weight, std=0.02)
        nn.init.normal_(self.kind_embed.weight, std=0.02)
        layers = [t.layer for t in targets] + (list(range(prefix.layers)) if prefix else [])
        query_kinds = [kinds.index(t.kind) for t in targets] + ([len(kinds) - 1] * prefix.layers if prefix else [])
        self.register_buffer("query_layer", torch.tensor(layers), persistent=False)
        self.register_buffer("query_kind", torch.tensor(query_kinds), persistent=False)
        block = nn.TransformerDecoderLayer(hidden_size, heads, 4 * hidden_size, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerDecoder(block, blocks, norm=nn.LayerNorm(hidden_size))
        # A's entries start with LoRA's variance (1 / in_features: std sqrt(d / in) through the 1/d head); B at zero.
        self.head_A = nn.ModuleDict({k: GeneratorHead(hidden_size, rank * shapes[k][0],
                                                      std=math.sqrt(hidden_size / shapes[k][0])) for k in self.kinds})
        self.head_B = nn.ModuleDict({k: GeneratorHead(hidden_size, shapes[k][1] * rank, std=0.0) for k in self.kinds})
        self.head_prefix = None
        if prefix is not None:  # keys and values of every layer's prefix, starting small (std 0.02)
            self.head_prefix = GeneratorHead(hidden_size, prefix.tokens * 2 * prefix.kv_heads * prefix.head_dim,
                                             std=0.02 * math.sqrt(hidden_size))

    def forward(self, instruction: torch.Tensor, mask: torch.Tensor) -> GeneratedAdapters:
        """``instruction`` [K, T, D] encoded instructions, ``mask`` [K, T] (True: a real token)."""
        memory = self.instruction_proj(instruction)
        queries = self.layer_embed(self.query_layer) + self.kind_embed(self.query_kind)
        out = self.blocks(queries.expand(len(memory), -1, -1), memory, memory_key_padding_mask=~mask.bool())
        A: list[torch.Tensor | None] = [None] * len(self.targets)
        B: list[torch.Tensor | None] = [None] * len(self.targets)
        K, r = len(memory), self.rank
        for kind in self.kinds:  # one head call per kind, over all its layers
            where = [j for j, t in enumerate(self.targets) if t.kind == kind]
            h = out[:, where]
            d_in, d_out = self.targets[where[0]].in_features, self.targets[where[0]].out_features
            a = self.head_A[kind](h).view(K, len(where), r, d_in)
            b = self.head_B[kind](h).view(K, len(where), d_out, r)
            for i, j in enumerate(where):
                A[j], B[j] = a[:, i], b[:, i]
        prefix = None
        if self.head_prefix is not None:
            s = self.prefix_shape
            raw = self.head_prefix(out[:, len(self.targets):]).view(K, s.layers, s.tokens, 2, s.kv_heads, s.head_dim)
            prefix = raw.permute(0, 1, 3, 4, 2, 5)  # [K, layers, key/value, kv_heads, tokens, head_dim]
        return GeneratedAdapters(A, B, prefix)
