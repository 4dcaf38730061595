"""Proxy tuning (Liu et al., 2024): steer a base model at decoding time with a small tuned / untuned pair.

At every step the next-token logits are

    base + alpha * (expert - antiexpert)

where the expert is a tuned small model and the anti-expert its untuned
version: their difference is "what tuning changed", added to a base model that
was never tuned. Temperature, top-p or greedy then apply as usual. The three
models decode in lockstep with one KV cache each (see ``decoding.py``).

The three models must share a tokenizer, since the same token ids are fed to
all of them. Expert and anti-expert may carry extra (padding) rows at the end
of their output vocabulary; those are cut to the base's size, as the reference
implementation does. Any other vocabulary difference is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mmtune.errors import ModelError


@dataclass
class ProxyTuned:
    """Three models whose next-token logits combine as ``base + alpha * (expert - antiexpert)``."""

    base: nn.Module
    expert: nn.Module
    antiexpert: nn.Module
    alpha: float = 1.0

    @property
    def models(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return (self.base, self.expert, self.antiexpert)

    def combine(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
        return proxy_logits(*logits, alpha=self.alpha)


def proxy_logits(base: torch.Tensor, expert: torch.Tensor, antiexpert: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """``base + alpha * (expert - antiexpert)`` over the last dimension, tails cut to the base vocabulary."""
    vocab = base.shape[-1]
    for role, logits in (("expert", expert), ("anti-expert", antiexpert)):
        if logits.shape[-1] < vocab:
            raise ModelError(f"proxy tuning: the {role} has {logits.shape[-1]} output logits, fewer than the "
                             f"base model's {vocab}; the vocabularies do not match")
    return base + alpha * (expert[..., :vocab] - antiexpert[..., :vocab])


def output_vocab_size(model: nn.Module) -> int:
    return model.get_output_embeddings().weight.shape[0]


def check_proxy_compatible(base: nn.Module, expert: nn.Module, antiexpert: nn.Module,
                           tokenizers: Sequence, names: Sequence[str] = ("base", "expert", "anti-expert")) -> None:
    """Same tokenizer vocabulary for all three; expert / anti-expert output vocabularies at least the base's.

    Checked before decoding so a mismatch is one clear line, not a shape
    error (or, worse, silently wrong arithmetic) in the middle of generation.
    """
    vocabs = [tok.get_vocab() for tok in tokenizers]
    for name, vocab in zip(names[1:], vocabs[1:]):
        if vocab != vocabs[0]:
            diff = len(set(vocab.items()) ^ set(vocabs[0].items()))
            raise ModelError(f"proxy tuning: the {name}'s tokenizer differs from the base model's "
                             f"({len(vocab)} vs {len(vocabs[0])} tokens, {diff} entries differ); "
                             "all three models must share one tokenizer")
    sizes = [output_vocab_size(m) for m in (base, expert, antiexpert)]
    for name, size in zip(names[1:], sizes[1:]):
        if size < sizes[0]:
            raise ModelError(f"proxy tuning: the {name} outputs {size} logits but the base model outputs "
                             f"{sizes[0]}; an expert / anti-expert may only have a longer vocabulary tail")


def load_proxy(base: str, expert: str, antiexpert: str, *, alpha: float = ProxyTuned.alpha, device_type: str = "cpu"):
    """``(ProxyTuned, tokenizer)``: every path may be a run directory, an exported directory or an alias.

    The tokenizer (and so the chat template) is the base model's. A model
    named twice (typically base = anti-expert) is loaded once: it keeps one KV
    cache per role, so sharing the weights is safe.
    """
    from mmtune.generation.decoding import as_source
    from mmtune.models.run_outputs import load_for_inference

    cache: dict[str, tuple] = {}
    for name in (base, expert, antiexpert):
        if name not in cache:
            cache[name] = load_for_inference(name, device_type=device_type)
    loaded = [cache[name] for name in (base, expert, antiexpert)]
    (b, tok), (e, e_tok), (a, a_tok) = loaded
    as_source(ProxyTuned(b, e, a, alpha))  # text models only: a clear error before the vocabulary checks
    check_proxy_compatible(b, e, a, [tok, e_tok, a_tok],
                           names=(f"base '{base}'", f"expert '{expert}'", f"anti-expert '{antiexpert}'"))
    return ProxyTuned(b, e, a, alpha), tok
