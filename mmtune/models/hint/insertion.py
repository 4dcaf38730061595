"""Generated adapters in the LLM: forward hooks that add each token's task's adapter to a module's output.

The base model is never copied. Every adapted module (``AdapterTarget``) gets one forward hook; when
weights are set, the hook adds ``scaling * B_k (f(A_k x))`` to the module's output, where ``k`` is the
task of the token ``x`` belongs to (``f``: identity for LoRA, ReLU for a parallel bottleneck adapter). A
packed row may hold samples of several tasks, so the task is chosen per token: ``x`` is projected by
the ``A`` of every task in the batch at once (``[..., K, r]``, K small), the other tasks' projections are
zeroed by the token's one-hot task, and one matmul with all ``B`` s finishes. Samples therefore get
exactly their own task's adapter, with no cross-talk, at the cost of K x r extra columns.

Hooks sit on whatever module holds the name (peft's LoRA layer when the LLM trains with LoRA too: the
generated adapter then adds to the trained one, as two stacked LoRAs would).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmtune.models.hint.generator import AdapterTarget, GeneratedAdapters

AdapterKind = Literal["lora", "bottleneck"]


class AdapterSlots:
    """The hooks on one LLM's adapted modules, and the generated weights they currently add."""

    def __init__(self, modules: dict[str, nn.Module], targets: list[AdapterTarget], *, scaling: float,
                 kind: AdapterKind) -> None:
        self.scaling = scaling
        self.kind = kind
        self._weights: GeneratedAdapters | None = None
        self._token_task: torch.Tensor | None = None
        self._handles = [modules[t.name].register_forward_hook(self._hook(j)) for j, t in enumerate(targets)]

    def set(self, weights: GeneratedAdapters, token_task: torch.Tensor | None = None) -> None:
        """From now on, add ``weights``; ``token_task`` [B, L]: each token's index into them (-1: none, e.g.
        padding); None: every token uses the only one (K = 1).

        Training sets them and leaves them set: activation checkpointing recomputes the forward inside
        backward, which must see the same adapters; the next batch's ``set`` replaces them.
        """
        count = len(weights.A[0]) if weights.A else len(weights.prefix)
        if token_task is None and count != 1:
            raise ValueError(f"{count} generated adapters and no per-token task to choose between them")
        self._weights, self._token_task = weights, token_task

    def clear(self) -> None:
        """Back to the plain LLM (the instruction encoder's own pass runs so)."""
        self._weights = self._token_task = None

    @contextmanager
    def inserted(self, weights: GeneratedAdapters, token_task: torch.Tensor | None = None) -> Iterator[None]:
        """The adapters in place for the duration of a block (inference: no backward follows)."""
        self.set(weights, token_task)
        try:
            yield
        finally:
            self.clear()

    @contextmanager
    def suspended(self) -> Iterator[None]:
        """No generated adapter for the duration of a block (the LLM's own pass over an instruction), then the
        ones set before, as they were."""
        saved = self._weights, self._token_task
        self.clear()
        try:
            yield
        finally:
            self._weights, self._token_task = saved

    def with_prefix(self, cache_key: str, inputs: dict, dtype: torch.dtype) -> dict:
        """Decoder arguments ``inputs`` (a first pass: ids or embeddings, a 4-D bool block mask, position ids) with
        the generated prefixes in front, as peft places a prefix for one sequence (mmtune's
        ``models.virtual_tokens``): the key/values in the KV cache, no positions of their own, the text counting
        from P. All ``K`` tasks' prefixes are in the cache; a token sees its own task's ``P`` only. ``dtype``: the
        LLM's (the generator's float32 would promote the cache and fail attention in bf16)."""
        from transformers import DynamicCache

        prefix = self._weights.prefix.to(dtype)  # [K, layers, 2, kv_heads, P, head_dim]
        K, layers, _, heads, P, dim = prefix.shape
        mask, positions = inputs["attention_mask"], inputs["position_ids"]
        batch = mask.shape[0]
        flat = prefix.permute(1, 2, 3, 0, 4, 5).reshape(layers, 2, 1, heads, K * P, dim).expand(-1, -1, batch, -1, -1, -1)
        cache = DynamicCache([(flat[layer, 0], flat[layer, 1]) for layer in range(layers)])
        task = self._token_task if self._token_task is not None else torch.zeros_like(positions)
        owner = torch.arange(K * P, device=mask.device) // P
        sees = (task[:, :, None] == owner[None, None, :])[:, None]
        if mask.ndim != 4:
            raise ValueError("generated prefixes need the explicit 4-D block mask")
        return {**inputs, cache_key: cache, "attention_mask": torch.cat([sees.to(mask.dtype), mask], dim=-1),
                "position_ids": positions + P}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, j: int):
        def add_adapter(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._weights is None:
                return None
            x = args[0]
            A, B = self._weights.A[j].to(x.dtype), self._weights.B[j].to(x.dtype)
            z = torch.einsum("...i,kri->...kr", x, A)
            if self.kind == "bottleneck":
                z = F.relu(z)
            if self._token_task is not None:
                task = self._token_task
                if task.shape != x.shape[:-1]:
                    raise ValueError(f"per-token tasks of shape {tuple(task.shape)} for inputs {tuple(x.shape[:-1])}")
                own = F.one_hot(task.clamp(min=0), len(A)).to(x.dtype) * (task >= 0).to(x.dtype)[..., None]
                z = z * own[..., None]
            return output + torch.einsum("...kr,kor->...o", z, B) * self.scaling

        return add_adapter
