"""The virtual tokens of peft's prompt-learning methods (prompt tuning, P-tuning, prefix tuning), placed by mmtune.

The trained parameters are peft's own (its ``get_prompt``: V embeddings, or V
key/values per layer); only their placement is done here. Why not peft's
forward: it concatenates a 2-D attention mask and drops position ids, so it
cannot take the explicit 4-D block mask and restarted positions of packed
rows, and in mmtune's decoding loop (one KV cache per model) it would prepend
the prompt again at every step.

The placement is peft's for an unpadded sequence: virtual positions 0..V-1,
then the text from position V (prompt / P-tuning: V embeddings before the
text's; prefix tuning: V key/values already in the cache, no positions of
their own). In a packed row every sample sees the same V virtual tokens and
counts its positions from V, so a packed sample computes exactly what it
computes alone; in a left-padded batch every row counts from V at its first
real token, so a padded prompt decodes like the same prompt alone. A
multimodal model's embeddings (media spliced in) get the same virtual tokens
in front.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

PLACED = ("PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING")
"""The prompt-learning methods placed here (those whose prompt needs no task ids or special forward)."""


def prompt_learning_type(model: nn.Module) -> str | None:
    """The peft type name of ``model``'s active prompt-learning adapter, or None (no virtual tokens)."""
    config = getattr(model, "active_peft_config", None)  # a PeftModel's; other models have none
    if config is None or not config.is_prompt_learning:
        return None
    return config.peft_type.value


def cache_kwarg(model: nn.Module) -> str:
    """transformers' name of the KV-cache argument: ``cache`` since 5.2x, before ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _extended_mask(mask: torch.Tensor, count: int, *, prefix: bool) -> torch.Tensor:
    """``mask`` with ``count`` virtual tokens in front that every real token sees.

    2-D ``[B, T]`` (generation): ones in front. 4-D bool ``[B, 1, Q, K]`` (the block mask of a batch): the
    virtual key columns are visible to every query; with prompt embeddings the virtual tokens are also
    queries, causal among themselves and blind to the text.
    """
    if mask.ndim == 2:
        return torch.cat([mask.new_ones(mask.shape[0], count), mask], dim=1)
    B, _, Q, K = mask.shape
    seen = torch.cat([mask.new_ones(B, 1, Q, count), mask], dim=-1)
    if prefix:
        return seen
    own = torch.ones(count, count, dtype=mask.dtype, device=mask.device).tril_().expand(B, 1, count, count)
    return torch.cat([torch.cat([own, mask.new_zeros(B, 1, count, K)], dim=-1), seen], dim=2)


def place_virtual_tokens(peft_model: nn.Module, *, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                         input_ids: torch.Tensor | None = None,
                         inputs_embeds: torch.Tensor | None = None) -> tuple[dict, int]:
    """Decoder arguments for a first pass (no KV cache yet) with the virtual tokens placed, and how many leading
    output positions are virtual (to drop from hidden states / logits)."""
    config = peft_model.active_peft_config
    count = config.num_virtual_tokens
    batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    prompts = peft_model.get_prompt(batch_size=batch)
    hf = peft_model.get_base_model()
    if config.peft_type.value == "PREFIX_TUNING":
        text = {"input_ids": input_ids} if input_ids is not None else {"inputs_embeds": inputs_embeds}
        return {**text, cache_kwarg(hf): prompts,
                "attention_mask": _extended_mask(attention_mask, count, prefix=True),
                "position_ids": position_ids + count}, 0
    if inputs_embeds is None:
        inputs_embeds = hf.get_input_embeddings()(input_ids)
    virtual = torch.arange(count, device=position_ids.device).expand(batch, count)
    return {"inputs_embeds": torch.cat([prompts.to(inputs_embeds.dtype), inputs_embeds], dim=1),
            "attention_mask": _extended_mask(attention_mask, count, prefix=False),
            "position_ids": torch.cat([virtual, position_ids + count], dim=1)}, count


class VirtualTokenLM(nn.Module):
    """A prompt-learning peft model called like any causal LM (as mmtune's decoding loop calls it).

    The first call (no cache) places the virtual tokens; later calls add them
    to the attention mask (they are in the cache) and shift positions by V.
    Logits cover the real tokens only.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.count = peft_model.active_peft_config.num_virtual_tokens
        self.method = prompt_learning_type(peft_model)
        self._cache = cache_kwarg(peft_model.get_base_model())

    @property
    def base_model(self) -> nn.Module:
        """The transformers model under the virtual tokens."""
        return self.peft_model.get_base_model()

    def get_base_model(self) -> nn.Module:
        """As a peft model answers (a multimodal model takes its embedding table from there)."""
        return self.base_model

    @property
    def config(self):
        return self.base_model.config

    @property
    def generation_config(self):
        return self.base_model.generation_config

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, use_cache: bool = False,
                inputs_embeds: torch.Tensor | None = None, **kwargs):
        """``input_ids`` or ``inputs_embeds`` (a multimodal model's, media spliced in), as a transformers model."""
        cache = kwargs.pop(self._cache, None)
        text = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        B, T = (input_ids if inputs_embeds is None else inputs_embeds).shape[:2]
        device = (input_ids if inputs_embeds is None else inputs_embeds).device
        if attention_mask is None:
            attention_mask = torch.ones(B, T, dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = torch.arange(T, device=device).expand(B, T)
        if cache is None:
            inputs, skip = place_virtual_tokens(self.peft_model, **text, attention_mask=attention_mask,
                                                position_ids=position_ids)
        else:
            inputs, skip = {**text, self._cache: cache, "position_ids": position_ids + self.count,
                            "attention_mask": _extended_mask(attention_mask, self.count, prefix=True)}, 0
        out = self.base_model(**inputs, use_cache=use_cache, **kwargs)
        out.logits = out.logits[:, skip:]
        return out
