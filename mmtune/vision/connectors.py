"""Connectors: encoder features ``[B, N, D_in]`` -> LLM input embeddings ``[B, M, D_out]``.

The contract (:class:`Connector`): ``forward(features, text_ids=None,
text_mask=None)`` and ``num_output_tokens(num_input_tokens) -> M``. A
projector keeps ``M = N``; a resampler or Q-Former returns a fixed ``M``
whatever ``N`` is; an instruction-aware Q-Former also reads the instruction
tokens (``wants_text = True``). Built-ins: ``linear`` and LLaVA's
``mlp{N}x_gelu`` (Linear, then (GELU, Linear) N-1 times).
"""

from __future__ import annotations

import abc
import re

import torch
from torch import nn

from mmtune.config.schema import ConnectorConfig
from mmtune.errors import ConfigError
from mmtune.utils.imports import import_object


class Connector(nn.Module, abc.ABC):
    """Base class of connectors (``forward`` is abstract: a connector without it fails when built)."""

    wants_text: bool = False
    """True for connectors that condition on the instruction (they get ``text_ids`` / ``text_mask``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    @abc.abstractmethod
    def forward(self, features: torch.Tensor, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
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

    def forward(self, features, text_ids=None, text_mask=None):
        return self.layers(features)


_MLP = re.compile(r"^mlp(\d+)x_gelu$")


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> Connector:
    if cfg.kind == "linear":
        connector: nn.Module = MLPProjector(in_dim, out_dim, depth=1)
    elif match := _MLP.match(cfg.kind):
        depth = int(match.group(1))
        if depth < 1:
            raise ConfigError("model.vision.connector.kind: mlp{N}x_gelu needs N >= 1")
        connector = MLPProjector(in_dim, out_dim, depth=depth)
    else:
        builder = import_object(cfg.kind, "model.vision.connector.kind")
        try:
            connector = builder(in_dim=in_dim, out_dim=out_dim, **cfg.options)
        except TypeError as exc:  # wrong options, or a class that does not implement the contract
            raise ConfigError(f"model.vision.connector: cannot build '{cfg.kind}': {exc}") from None
    if not isinstance(connector, Connector):
        raise ConfigError(f"model.vision.connector.kind: '{cfg.kind}' built a {type(connector).__name__}, "
                          "not an mmtune.vision.connectors.Connector")
    return connector
