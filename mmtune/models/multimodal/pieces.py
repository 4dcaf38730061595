"""Pieces: modules between a branch's encoder and its connector, and the built-in ones.

The contract (:class:`BranchPiece`): ``[B, N, dim] -> [B, num_output_tokens(N), output_dim]``, built with the
``dim`` and ``num_tokens`` of its input plus its recipe options. For a video or an audio branch ``B`` counts
frames / clips, unless the piece works across them (``across_segments``).
"""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.models.multimodal.qformer import build_query_transformer, query_outputs


class BranchPiece(nn.Module, abc.ABC):
    """A module between encoder and connector: ``[B, N, dim] -> [B, num_output_tokens(N), output_dim]``.

    Built with ``dim`` and ``num_tokens`` of its input (plus its recipe options).
    """

    across_segments: bool = False
    """False: applied to each frame / clip on its own (``[B*S, N, dim]``). True: receives ``[B, S, N, dim]`` of
    a sequence modality (a position embedding over frames) and returns the same layout."""

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.dim = dim
        self.num_tokens = num_tokens

    @property
    def output_dim(self) -> int:
        return self.dim

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    @abc.abstractmethod
    def forward(self, features: torch.Tensor) -> torch.Tensor: ...


class LayerNormPiece(BranchPiece):
    """A LayerNorm over the features: BLIP-2's ``ln_vision`` after a frozen EVA ViT-g (LAVIS trains it with the
    Q-Former while the ViT stays frozen, so it is a piece with its own method, not part of the encoder)."""

    def __init__(self, dim: int, num_tokens: int, eps: float = 1e-5):
        super().__init__(dim, num_tokens)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(features)


class SegmentPositionPiece(BranchPiece):
    """A learned embedding of each frame's (or clip's) index, added to all its tokens: Video-LLaMA's
    ``video_frame_position_embedding`` (and ``audio_position_embedding``), ``nn.Embedding(max_segments, dim)``."""

    across_segments = True

    def __init__(self, dim: int, num_tokens: int, max_segments: int = 32):
        super().__init__(dim, num_tokens)
        if max_segments < 1:
            raise ValueError("max_segments must be >= 1")
        self.embedding = nn.Embedding(max_segments, dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4:
            raise ModelError("segment_position works on frames or clips: it needs a video or audio branch")
        segments = features.shape[1]
        if segments > self.embedding.num_embeddings:
            raise ModelError(f"{segments} frames/clips but segment_position has max_segments "
                             f"{self.embedding.num_embeddings}")
        positions = self.embedding(torch.arange(segments, device=features.device))
        return features + positions[None, :, None, :].to(features.dtype)


class SpatialPoolPiece(BranchPiece):
    """Average-pool each frame's patch grid by ``stride`` (LLaVA-NeXT-Video's 2 x 2 pooling; Video-ChatGPT pools
    space too): a grid of ``h x w`` patch tokens becomes ``ceil(h / stride) x ceil(w / stride)`` tokens, in row
    order. ``grid: [h, w]`` for a grid that is not square (an AST clip: 12 mel rows x 19 time columns); the
    default is the square one."""

    def __init__(self, dim: int, num_tokens: int, stride: int = 2, grid: tuple[int, int] | list[int] | None = None):
        super().__init__(dim, num_tokens)
        if grid is None:
            side = int(round(num_tokens ** 0.5))
            grid = (side, side)
        rows, cols = (int(g) for g in grid)
        if rows * cols != num_tokens:
            raise ValueError(f"spatial_pool: a grid of {rows} x {cols} is not the {num_tokens} patch tokens it gets "
                             "(select_feature: patch; give grid: [rows, cols] for a grid that is not square)")
        if stride < 1:
            raise ValueError("stride must be >= 1")
        self.grid, self.stride = (rows, cols), stride

    def num_output_tokens(self, num_input_tokens: int) -> int:
        rows, cols = self.grid
        return -(-rows // self.stride) * -(-cols // self.stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, n, d = features.shape
        grid = features.transpose(1, 2).reshape(b, d, *self.grid)
        pooled = nn.functional.avg_pool2d(grid, self.stride, self.stride, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2)


class QFormerPiece(BranchPiece):
    """BLIP-2's Q-Former without a projection, on each frame: ``num_query_tokens`` outputs of its width per frame
    (Video-LLaMA's frozen image Q-Former; its parameters are named as in transformers' InstructBLIP)."""

    def __init__(self, dim: int, num_tokens: int, *, num_query_tokens: int = 32,
                 qformer: dict[str, Any] | None = None):
        super().__init__(dim, num_tokens)
        self.qformer, self.query_tokens = build_query_transformer(dim, num_query_tokens, qformer, vocab_size=None)

    @property
    def output_dim(self) -> int:
        return self.query_tokens.shape[-1]

    def num_output_tokens(self, num_input_tokens: int) -> int:
        return self.query_tokens.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return query_outputs(self.qformer, self.query_tokens, features)


PIECE_BUILDERS: dict[str, Any] = {"layer_norm": LayerNormPiece, "segment_position": SegmentPositionPiece,
                                  "spatial_pool": SpatialPoolPiece, "qformer": QFormerPiece}
"""Built-in pieces by short name (``pieces: {ln_vision: {kind: layer_norm}}``); others by ``package.module:Class``.
``qformer``: BLIP-2's Q-Former without its projection, per frame (Video-LLaMA's frozen image Q-Former)."""
