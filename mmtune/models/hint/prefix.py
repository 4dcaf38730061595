"""One instruction's generated prefix, decoded as peft's prefix tuning is.

:class:`GeneratedPrefix` answers what mmtune's virtual-token placement asks of a peft prefix-tuning model
(``active_peft_config``, ``get_prompt``, ``get_base_model``), so
:class:`~mmtune.models.virtual_tokens.VirtualTokenLM` decodes with it unchanged: the prefix in the KV cache
of the first pass, every later step seeing it, positions counted from P. ``mmtune hint adapt`` writes the same
tensor as a peft prefix-tuning adapter.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtune.models.hint.hypernetwork import transformers_model


class GeneratedPrefix:
    def __init__(self, llm: nn.Module, prefix: torch.Tensor) -> None:
        """``prefix`` [1, layers, 2, kv_heads, P, head_dim] (one instruction's)."""
        from peft import PrefixTuningConfig

        _, layers, _, heads, tokens, dim = prefix.shape
        self.llm = llm
        self.prefix = prefix[0].to(transformers_model(llm).dtype)
        self.active_peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens,
                                                     num_layers=layers, num_attention_heads=heads,
                                                     token_dim=heads * dim)

    def get_base_model(self) -> nn.Module:
        return transformers_model(self.llm)

    def get_prompt(self, batch_size: int):
        from transformers import DynamicCache

        return DynamicCache([(self.prefix[layer, 0].expand(batch_size, -1, -1, -1),
                              self.prefix[layer, 1].expand(batch_size, -1, -1, -1))
                             for layer in range(len(self.prefix))])

    def peft_weight(self) -> torch.Tensor:
        """The prefix as peft stores it: ``[P, layers * 2 * kv_heads * head_dim]`` (layer-major, key then value)."""
        layers, _, heads, tokens, dim = self.prefix.shape
        return self.prefix.permute(3, 0, 1, 2, 4).reshape(tokens, layers * 2 * heads * dim)
