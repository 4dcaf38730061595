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
        if token_task is None and len(weights.A[0]) != 1:
            raise ValueError(f"{len(weights.A[0])} generated adapters and no per-token task to choose between them")
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
