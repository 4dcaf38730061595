"""One modality's branch of a multimodal model: encoder -> pieces -> connector -> LLM embeddings.

A branch turns one modality's collated items (:class:`MediaInputs`) into the
embeddings that fill that modality's placeholder positions. Pieces are
optional named modules between the encoder and the connector (a frame position
embedding, a pooling); their contract is :class:`BranchPiece`.

A branch also tells the data side what it needs (:meth:`MediaBranch.input_spec`):
the number of tokens an item takes, the preprocessing of the modality for this
encoder, and, when the connector reads the instruction, the tokenizer of that
text.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from mmtune.config.media import BranchConfig
from mmtune.modalities.base import FixedTokens, MediaInputs, MediaInputSpec, Modality
from mmtune.models.multimodal.connectors import Connector
from mmtune.models.multimodal.encoders import MediaEncoder


class BranchPiece(nn.Module, abc.ABC):
    """A module between encoder and connector: ``[B, N, dim] -> [B, num_output_tokens(N), output_dim]``.

    Built with ``dim`` and ``num_tokens`` of its input (plus its recipe options).
    """

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


PIECE_BUILDERS: dict[str, type[BranchPiece]] = {"layer_norm": LayerNormPiece}
"""Built-in pieces by short name (``pieces: {ln_vision: {kind: layer_norm}}``); others by ``package.module:Class``."""


class MediaBranch(nn.Module):
    def __init__(self, modality: Modality, config: BranchConfig, encoder: MediaEncoder,
                 pieces: dict[str, BranchPiece], connector: Connector):
        super().__init__()
        self.modality = modality
        self.config = config
        self.encoder = encoder
        self.pieces = nn.ModuleDict(pieces)
        self.connector = connector
        tokens = encoder.num_tokens
        for piece in pieces.values():
            tokens = piece.num_output_tokens(tokens)
        self.num_tokens = connector.num_output_tokens(tokens)
        """LLM positions per item (fixed for image branches)."""
        self.transform = modality.transform(config, encoder)
        self.train_transform = modality.transform(config, encoder, train=True)
        """With the branch's training-time augmentation (the same as ``transform`` when it has none)."""

    def components(self) -> dict[str, nn.Module]:
        """What ``method.media.<modality>`` addresses: ``encoder``, ``connector`` and ``pieces.<name>``."""
        return {"encoder": self.encoder, **{f"pieces.{n}": p for n, p in self.pieces.items()},
                "connector": self.connector}

    def input_spec(self, llm_tokenizer=None, *, train: bool = False) -> MediaInputSpec:
        """What the data side needs; ``llm_tokenizer`` reads the instruction of a connector without its own;
        ``train``: training batches (augmented, when the branch augments)."""
        text_tokenizer = None
        if self.connector.wants_text:
            text_tokenizer = self.connector.text_tokenizer or llm_tokenizer
        transform = self.train_transform if train else self.transform
        return MediaInputSpec(self.modality, FixedTokens(self.num_tokens), transform, text_tokenizer,
                              self.config.connector.max_text_tokens)

    @property
    def reads_llm_embeddings(self) -> bool:
        """The connector reads the instruction through the LLM's tokenizer, so it gets the LLM's embeddings of it."""
        return self.connector.wants_text and self.connector.text_tokenizer is None

    def forward(self, inputs: MediaInputs, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``[items, ...]`` -> ``[items, num_tokens, D_llm]``; a frozen encoder runs without autograd."""
        encoder_trains = any(p.requires_grad for p in self.encoder.parameters())
        first = next(self.encoder.parameters(), None)
        values = inputs.values.to(first.dtype) if first is not None and inputs.values.is_floating_point() else inputs.values
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_trains):
            features = self.encoder(values)
        for piece in self.pieces.values():
            features = piece(_in_dtype_of(piece, features))
        features = _in_dtype_of(self.connector, features)
        if not self.connector.wants_text:
            return self.connector(features)
        return self.connector(features, text_ids=inputs.text_ids, text_mask=inputs.text_mask, text_embeds=text_embeds)


def _in_dtype_of(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    param = next(module.parameters(), None)
    return features.to(param.dtype) if param is not None else features
