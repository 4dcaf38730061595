"""One modality's branch of a multimodal model: encoder -> pieces -> connector -> LLM embeddings.

A branch turns one modality's collated items (:class:`MediaInputs`) into the
embeddings that fill that modality's placeholder positions. Pieces are
optional named modules between the encoder and the connector (a frame position
embedding, a pooling); their contract is :class:`~mmtune.models.multimodal.pieces.BranchPiece`.

A branch also tells the data side what it needs (:meth:`MediaBranch.input_spec`):
the number of tokens an item takes, the preprocessing of the modality for this
encoder, and, when the connector reads the instruction, the tokenizer of that
text.

Sequence modalities (a video's frames, an audio's clips) share one mechanism:
items arrive as ``[items, S, ...]`` with ``lengths`` (segments per item), the
encoder runs on every segment as if it were an item of its own, and so do the
pieces, unless a piece works *across* segments (``across_segments = True``:
the frame position embedding sees ``[items, S, N, D]``). Then either the
connector runs per segment (``frame_wise``: a projector, a per-frame Q-Former
as in InstructBLIP-Video), so an item takes ``S x M`` positions, or it reads
all the segments' features at once (a video Q-Former), masked where an item
has fewer segments, and an item takes its fixed ``M`` positions.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtune.config.media import BranchConfig
from mmtune.errors import ConfigError
from mmtune.modalities.base import FixedTokens, MediaInputs, MediaInputSpec, Modality, PerSegmentTokens, TokenCount
from mmtune.models.multimodal.connectors import Connector
from mmtune.models.multimodal.encoders import MediaEncoder
from mmtune.models.multimodal.pieces import PIECE_BUILDERS, BranchPiece, LayerNormPiece

__all__ = ["PIECE_BUILDERS", "BranchPiece", "LayerNormPiece", "MediaBranch"]


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
        self.segment_tokens = tokens
        """Tokens per item (per frame / clip for sequence modalities) reaching the connector."""
        self.sequence = modality.sequence
        self.frame_wise = self.sequence and connector.frame_wise
        """The connector runs per frame / clip, so an item's positions grow with its segments."""
        if self.sequence and not self.frame_wise and \
                connector.num_output_tokens(tokens) != connector.num_output_tokens(2 * tokens):
            raise ConfigError(f"model.media.{modality.name}.connector: {type(connector).__name__} neither runs per "
                              "frame/clip (frame_wise) nor gives a fixed number of tokens, so the positions of an "
                              f"item of {modality.plural} are not defined")
        self.num_tokens = connector.num_output_tokens(tokens)
        """LLM positions per item; for a frame-wise sequence branch, per frame / clip."""
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
        return MediaInputSpec(self.modality, self.token_count(train=train), transform, text_tokenizer,
                              self.config.connector.max_text_tokens, self.modality.companion(self.config))

    def token_count(self, *, train: bool = False) -> TokenCount:
        """Positions per item: fixed, or per frame / clip (the modality's counter reads the item's header)."""
        if not self.sequence:
            return FixedTokens(self.num_tokens)
        counter = self.modality.segment_counter(self.config, train=train)
        if self.frame_wise:
            return PerSegmentTokens(counter, per_segment=self.num_tokens)
        return PerSegmentTokens(counter, fixed=self.num_tokens)

    def item_tokens(self, inputs: MediaInputs) -> torch.Tensor:
        """``[items]`` positions of each item of ``inputs`` (its segments decide for a frame-wise branch)."""
        if self.frame_wise:
            segments = inputs.lengths if inputs.lengths is not None else \
                torch.full((len(inputs),), inputs.values.shape[1], dtype=torch.long)
            return segments.cpu() * self.num_tokens
        return torch.full((len(inputs),), self.num_tokens, dtype=torch.long)

    @property
    def reads_llm_embeddings(self) -> bool:
        """The connector reads the instruction through the LLM's tokenizer, so it gets the LLM's embeddings of it."""
        return self.connector.wants_text and self.connector.text_tokenizer is None

    def forward(self, inputs: MediaInputs, text_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``[items, ...]`` -> ``[items, M, D_llm]``; a frozen encoder runs without autograd.

        ``M`` is :attr:`num_tokens`; for a frame-wise sequence branch it is ``S x num_tokens`` for ``S`` segments
        in the batch, and an item with fewer (:meth:`item_tokens`) fills only the first positions.
        """
        encoder_trains = any(p.requires_grad for p in self.encoder.parameters())
        first = next(self.encoder.parameters(), None)
        values = inputs.values.to(first.dtype) if first is not None and inputs.values.is_floating_point() else inputs.values
        items = values.shape[0]
        segments = values.shape[1] if self.sequence else 1
        if self.sequence:
            values = values.flatten(0, 1)  # every frame / clip is encoded on its own
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_trains):
            features = self.encoder(values)
        for piece in self.pieces.values():
            features = _in_dtype_of(piece, features)
            if piece.across_segments:
                features = piece(features.unflatten(0, (items, segments))).flatten(0, 1)
            else:
                features = piece(features)
        features = _in_dtype_of(self.connector, features)
        text = {}
        if self.connector.wants_text:
            text = {"text_ids": inputs.text_ids, "text_mask": inputs.text_mask, "text_embeds": text_embeds}
        if not self.sequence:
            return self.connector(features, **text)
        if self.frame_wise:  # per frame: the instruction goes with every frame
            text = {k: None if v is None else v.repeat_interleave(segments, 0) for k, v in text.items()}
            return self.connector(features, **text).unflatten(0, (items, segments)).flatten(1, 2)
        features = features.unflatten(0, (items, segments)).flatten(1, 2)  # [items, S*N, D]
        if inputs.lengths is not None and bool((inputs.lengths < segments).any()):
            present = torch.arange(segments, device=features.device)[None] < inputs.lengths.to(features.device)[:, None]
            text["feature_mask"] = present.repeat_interleave(self.segment_tokens, 1).long()
        return self.connector(features, **text)


def _in_dtype_of(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    param = next(module.parameters(), None)
    return features.to(param.dtype) if param is not None else features
