"""The training objective: summed next-token cross-entropy over trained positions only.

:class:`CausalLMObjective` wraps any Hugging Face causal LM (plain or peft) as
one ``nn.Module`` so DDP / FSDP / DeepSpeed wrap the whole computation. It runs
the decoder, then applies the output head only at positions that have a
target: prompt tokens (often half of a chat sample) never pay for the
vocabulary projection, which is the largest matmul of a small model.

Some model families post-process logits inside their ``forward`` (scaling,
soft-capping). Rather than keying behaviour on model names, the objective
*checks* once, on a few real tokens, that decoder + head reproduces the
model's own logits, and otherwise falls back to the model's full forward.

It returns the *sum* of token losses and the number of targets; the training
loop divides by the number of targets in the whole accumulation window, so
every trained token weighs the same however the tokens fall into batches.
A batch of a multi-task mixture (``Batch.target_group``) adds a third value:
the detached loss sum of each task's targets, exact also in packed rows.

A :class:`~mmtune.models.multimodal.model.MultimodalLM` trains the same way:
its input embeddings (text embeddings with every branch's output spliced in)
go to the same decoder and head.

A prompt-learning peft model (prompt / P- / prefix tuning) gets its virtual
tokens placed before every sequence (``mmtune.models.virtual_tokens``); their
output positions carry no target and are dropped. A method's own loss term
(``penalty``: AdaLoRA's orthogonality) is added once per batch, weighted by its
targets, so it counts once per optimizer step however the window is split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtune.data.packing import IGNORE_INDEX, Batch
from mmtune.models.kernels import HeadLoss
from mmtune.models.multimodal.model import MultimodalLM
from mmtune.models.virtual_tokens import place_virtual_tokens, prompt_learning_type

_HEAD_CHUNK = 4096  # targets per output-head chunk: bounds the [chunk, vocab] logits memory


def hf_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper or a multimodal model (or the model itself)."""
    if isinstance(model, MultimodalLM):
        return model.language_model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class CausalLMObjective(nn.Module):
    def __init__(self, lm: nn.Module, fused_loss: HeadLoss | None = None,
                 penalty: Callable[[], torch.Tensor] | None = None,
                 place_prefix: Callable[[dict], dict] | None = None) -> None:
        """``fused_loss``: a fused output-head + cross-entropy kernel (``train.kernels``,
        :func:`mmtune.models.kernels.apply_kernels`), used where the head is a plain ``nn.Linear``.
        ``place_prefix``: decoder arguments -> the same with a key/value prefix in the KV cache (the hint task's
        generated prefixes); its positions are not outputs."""
        super().__init__()
        self.place_prefix = place_prefix
        self.lm = lm
        self.fused_loss = fused_loss
        self.penalty = penalty
        """A method's loss term, added in training (AdaLoRA's orthogonality regulariser)."""
        hf = hf_model_of(lm)
        self._no_split_modules = getattr(hf, "_no_split_modules", None)  # FSDP auto-wrap reads this
        self.softcap = getattr(hf.config, "final_logit_softcapping", None)
        self.selective_head = True
        llm = lm.llm if isinstance(lm, MultimodalLM) else lm
        self.prompt_learner = llm if prompt_learning_type(llm) is not None else None
        """The peft model whose virtual tokens go before every sequence (None: no virtual tokens)."""

    @torch.no_grad()
    def check_selective_head(self, input_ids: torch.Tensor) -> bool:
        """Use the selective head only if it reproduces the model's own logits on ``input_ids`` [1, n]."""
        hf = hf_model_of(self.lm)
        was_training = hf.training
        hf.eval()
        try:
            reference = hf(input_ids=input_ids, use_cache=False).logits.float()
            hidden = hf.get_decoder()(input_ids=input_ids, use_cache=False)[0]
            ours = self._logits(hf, hidden).float()
        finally:
            hf.train(was_training)
        self.selective_head = reference.shape == ours.shape and torch.allclose(reference, ours, atol=1e-3, rtol=1e-3)
        return self.selective_head

    def _logits(self, hf: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = hf.get_output_embeddings()(hidden)
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        if isinstance(self.lm, MultimodalLM):
            return {"inputs_embeds": self.lm.input_embeddings(batch.input_ids, batch.media)}
        return {"input_ids": batch.input_ids}

    def _decoder_inputs(self, batch: Batch) -> tuple[dict[str, torch.Tensor], int]:
        """The decoder's arguments, and how many leading output positions are virtual tokens."""
        inputs = dict(self._inputs(batch), attention_mask=batch.attention_mask, position_ids=batch.position_ids)
        if self.prompt_learner is not None:
            return place_virtual_tokens(self.prompt_learner, **inputs)
        if self.place_prefix is not None:
            return self.place_prefix(inputs), 0
        return inputs, 0

    def forward(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        """``(loss_sum, n_targets)``, and the detached loss sum per target group when the batch has groups."""
        loss_sum, n, *per_group = self._loss_sum(batch)
        if self.penalty is not None and self.training:
            loss_sum = loss_sum + self.penalty() * n
        return (loss_sum, n, *per_group)

    def _loss_sum(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        hf = hf_model_of(self.lm)
        selected = batch.targets != IGNORE_INDEX
        groups = None if batch.target_group is None else (batch.target_group[selected], len(batch.group_targets))
        inputs, virtual = self._decoder_inputs(batch)
        if not self.selective_head:  # the model's own forward, full logits
            logits = hf(**inputs, use_cache=False).logits[:, virtual:]
            return head_loss_sum(lambda x: x, logits[selected], batch.targets[selected], groups)
        out = hf.get_decoder()(**inputs, use_cache=False)
        hidden = (out[0] if isinstance(out, tuple) else out.last_hidden_state)[:, virtual:]
        head = hf.get_output_embeddings()
        if self.fused_loss is not None and type(head) is nn.Linear and groups is None:
            targets = batch.targets[selected]
            return self.fused_loss(head, hidden[selected], targets), torch.tensor(len(targets), device=hidden.device)
        return head_loss_sum(lambda h: self._logits(hf, h), hidden[selected], batch.targets[selected], groups)


def head_loss_sum(head, hidden: torch.Tensor, targets: torch.Tensor,
                  groups: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, ...]:
    """Sum of cross-entropy of ``head(hidden)`` against ``targets``, and the number of targets.

    Above one chunk of targets, each chunk's logits are recomputed in backward
    instead of kept, so memory stays at one ``[chunk, vocab]`` block.
    ``groups``: each target's group index (-1: none) and the number of groups; a third value is then the
    detached loss sum per group.
    """
    reduction = "sum" if groups is None else "none"

    def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, reduction=reduction)

    if len(targets) <= _HEAD_CHUNK:
        losses = chunk_loss(hidden, targets)
    else:
        chunks = [checkpoint(chunk_loss, hidden[start : start + _HEAD_CHUNK], targets[start : start + _HEAD_CHUNK],
                             use_reentrant=False) for start in range(0, len(targets), _HEAD_CHUNK)]
        losses = torch.stack(chunks).sum() if groups is None else torch.cat(chunks)
    count = torch.tensor(len(targets), device=hidden.device)
    if groups is None:
        return losses, count
    index, num_groups = groups
    known = index >= 0
    per_group = torch.zeros(num_groups, device=hidden.device).index_add_(0, index[known], losses.detach()[known])
    return losses.sum(), count, per_group
