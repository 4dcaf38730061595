"""MultimodalLM: image encoder + connector + any Hugging Face causal LM.

Text reaches the LLM as token embeddings; every image placeholder position
(:data:`~mmtune.vision.images.IMAGE_PLACEHOLDER_ID`, one per connector output
token) is filled with the connector's output for that image, images taken in
the order their placeholders appear (row-major over the batch). Those
positions are never trained: the data pipeline marks them untrained.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.vision.connectors import Connector
from mmtune.vision.encoders import ImageEncoder
from mmtune.vision.images import IMAGE_PLACEHOLDER_ID, ImageTransform


class MultimodalLM(nn.Module):
    def __init__(self, encoder: ImageEncoder, connector: Connector, llm: nn.Module, transform: ImageTransform):
        super().__init__()
        if connector.wants_text:
            raise ModelError(f"{type(connector).__name__} wants the instruction text (wants_text=True); "
                             "MultimodalLM does not pass it to connectors yet (it comes with the Q-Former)")
        self.encoder = encoder
        self.connector = connector
        self.llm = llm
        self.transform = transform
        self.num_image_tokens = connector.num_output_tokens(encoder.num_tokens)

    @property
    def language_model(self) -> nn.Module:
        """The transformers model inside a possible peft wrapper."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def generation_config(self):
        return self.language_model.generation_config

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[n, 3, H, W]`` -> ``[n, M, D_llm]``; a frozen encoder runs without autograd."""
        encoder_trains = any(p.requires_grad for p in self.encoder.parameters())
        first = next(self.encoder.parameters(), None)
        pixel_values = pixel_values.to(first.dtype if first is not None else pixel_values.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and encoder_trains):
            features = self.encoder(pixel_values)
        connector_param = next(self.connector.parameters(), None)
        if connector_param is not None:
            features = features.to(connector_param.dtype)
        return self.connector(features)

    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        is_image = input_ids == IMAGE_PLACEHOLDER_ID
        embeds = self.language_model.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        slots = int(is_image.sum())
        images = 0 if pixel_values is None else len(pixel_values)
        if slots != images * self.num_image_tokens:
            raise ModelError(f"{slots} image positions in the tokens but {images} image(s) x "
                             f"{self.num_image_tokens} tokens each")
        if not images:
            return embeds
        features = self.image_embeddings(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(is_image[..., None], features)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kwargs):
        return self.llm(inputs_embeds=self.input_embeddings(input_ids, pixel_values), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs):
        """Generated token ids only (transformers returns only new tokens when given embeddings)."""
        embeds = self.input_embeddings(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
