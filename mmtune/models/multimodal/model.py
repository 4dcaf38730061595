"""MultimodalLM: one branch per modality + any Hugging Face causal LM, joined by one splice.

Text reaches the LLM as token embeddings. Every placeholder position of a
modality (its ``placeholder_id``, one per position of an item) is filled
with that modality's branch output, items taken in the order their
placeholders appear (row-major over the batch). Those positions are never
trained: the data pipeline marks them untrained.

A branch without items in a batch (text-only samples) still takes part in
the graph, with weight zero, while gradients are computed: data-parallel
training reduces the gradients of the same parameters on every process, and
a process whose batch has no image would otherwise leave its connector out.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtune.errors import ModelError
from mmtune.modalities.base import MediaInputs, MediaInputSpec
from mmtune.models.multimodal.branch import MediaBranch


class MultimodalLM(nn.Module):
    def __init__(self, llm: nn.Module, branches: dict[str, MediaBranch]):
        super().__init__()
        if not branches:
            raise ModelError("a multimodal model needs at least one media branch")
        self.llm = llm
        self.branches = nn.ModuleDict(branches)

    @property
    def language_model(self) -> nn.Module:
        """The transformers model inside a possible peft wrapper."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def generation_config(self):
        return self.language_model.generation_config

    def media_specs(self, tokenizer=None, *, train: bool = False) -> dict[str, MediaInputSpec]:
        """What the data side needs per modality; ``tokenizer`` (the LLM's) reads instructions for connectors;
        ``train``: for training batches (with the branches' augmentation)."""
        return {name: branch.input_spec(tokenizer, train=train) for name, branch in self.branches.items()}

    def input_embeddings(self, input_ids: torch.Tensor, media: dict[str, MediaInputs] | None = None) -> torch.Tensor:
        """Token embeddings with every modality's branch output spliced into its placeholder positions."""
        media = media or {}
        unknown = set(media) - set(self.branches)
        if unknown:
            raise ModelError(f"media of modality {sorted(unknown)} given, but the model has branches for "
                             f"{sorted(self.branches)} only")
        table = self.language_model.get_input_embeddings()
        masks = {name: input_ids == branch.modality.placeholder_id for name, branch in self.branches.items()}
        any_media = torch.zeros_like(input_ids, dtype=torch.bool)
        for mask in masks.values():
            any_media |= mask
        embeds = table(input_ids.masked_fill(any_media, 0))
        for name, branch in self.branches.items():
            slots = int(masks[name].sum())
            given = media.get(name)
            count = 0 if given is None else len(given)
            per_item = branch.item_tokens(given) if count else torch.zeros(0, dtype=torch.long)
            if slots != int(per_item.sum()):
                raise ModelError(f"{slots} {name} positions in the tokens but {count} {branch.modality.plural} "
                                 f"taking {int(per_item.sum())} positions")
            if not count:
                embeds = embeds + _unused(branch)
                continue
            text_embeds = table(given.text_ids) if branch.reads_llm_embeddings else None
            features = branch(given, text_embeds=text_embeds).to(embeds.dtype)  # [items, M, D]
            if int(per_item.min()) < features.shape[1]:  # items with fewer frames fill their first positions
                present = torch.arange(features.shape[1])[None] < per_item[:, None]
                features = features[present.to(features.device)]
            embeds = embeds.masked_scatter(masks[name][..., None], features.reshape(-1, features.shape[-1]))
        return embeds

    def forward(self, input_ids: torch.Tensor, media: dict[str, MediaInputs] | None = None, **kwargs):
        return self.llm(inputs_embeds=self.input_embeddings(input_ids, media), **kwargs)


def _unused(branch: MediaBranch) -> torch.Tensor | float:
    """Zero, attached to the branch's trainable parameters when gradients are being computed."""
    if not torch.is_grad_enabled():
        return 0.0
    trained = [p for p in branch.parameters() if p.requires_grad]
    return sum(p.reshape(-1)[:1].sum() for p in trained) * 0.0 if trained else 0.0
