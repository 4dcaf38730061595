"""The training objective: summed next-token cross-entropy over trained positions only.

:class:`CausalLMObjective` wraps any Hugging Face causal LM (plain or peft) as
one ``nn.Module`` so DDP / FSDP / DeepSpeed wrap the whole computation. It runs
the decoder, then applies the output head only at positions that have a
target: prompt tokens (often half of a chat sample) never pay for the
vocabulary projection, which is the largest matmul of a small model.

It returns the *sum* of token losses and the number of targets; the training
loop divides by the number of targets in the whole accumulation window, so
every trained token weighs the same however the tokens fall into batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtune.data.packing import IGNORE_INDEX, Batch

_HEAD_CHUNK = 4096  # targets per output-head chunk: bounds the [chunk, vocab] logits memory


def hf_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CausalLMObjective(nn.Module):
    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm
        hf = hf_model_of(lm)
        self._no_split_modules = getattr(hf, "_no_split_modules", None)  # FSDP auto-wrap reads this
        self.softcap = getattr(hf.config, "final_logit_softcapping", None)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        hf = hf_model_of(self.lm)
        out = hf.get_decoder()(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
        )
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        selected = batch.targets != IGNORE_INDEX
        return head_loss_sum(hf.get_output_embeddings(), hidden[selected], batch.targets[selected], self.softcap)


def head_loss_sum(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of cross-entropy of ``head(hidden)`` against ``targets``.

    Above one chunk of targets, each chunk's logits are recomputed in backward
    instead of kept, so memory stays at one ``[chunk, vocab]`` block.
    """

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return F.cross_entropy(logits, t, reduction="sum")

    if len(targets) <= _HEAD_CHUNK:
        total = chunk_loss(hidden, targets)
    else:
        total = hidden.sum().float() * 0.0
        for start in range(0, len(targets), _HEAD_CHUNK):
            h, t = hidden[start : start + _HEAD_CHUNK], targets[start : start + _HEAD_CHUNK]
            total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
    return total, torch.tensor(len(targets), device=hidden.device)
