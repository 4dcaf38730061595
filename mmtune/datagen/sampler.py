"""Batched, seeded text completion with a local causal LM: the only place the generators touch a model.

The generators ask for completions of a list of prompts and get back the text
up to the first stop string plus whether generation ran out of tokens (a
truncated list or instance is unfinished and is dropped by the callers, as the
Self-Instruct reference drops responses that end for length). Every call
carries its own seed, derived from the run seed and the batch number, so a
resumed run draws exactly what an uninterrupted one would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from mmtune.generation.options import stop_token_ids


@dataclass(frozen=True)
class Completion:
    text: str
    truncated: bool
    """True when generation hit ``max_new_tokens`` before a stop string or end-of-sequence."""


class Sampler(Protocol):
    def settings(self) -> dict:
        """What identifies this sampler's output (model, temperature ...): a resumed run must match it."""
        ...

    def complete(
        self, prompts: list[str], *, chat: bool, seed: int, max_new_tokens: int,
        stop: tuple[str, ...] = (), greedy: bool = False,
    ) -> list[Completion]: ...


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """Text before the earliest stop string, and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class StopOnText:
    """A ``generate`` stopping criterion: a row is done once its recent text contains a stop string.

    Only the last few tokens are decoded per step, which is far cheaper than
    transformers' ``stop_strings`` (that one rebuilds a table over the whole
    vocabulary on every ``generate`` call: seconds per call on a CPU).
    """

    TAIL_TOKENS = 12

    def __init__(self, tokenizer, stop: tuple[str, ...], prompt_len: int) -> None:
        self.tokenizer, self.stop, self.prompt_len = tokenizer, stop, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        tail = input_ids[:, max(self.prompt_len, input_ids.shape[1] - self.TAIL_TOKENS):]
        texts = self.tokenizer.batch_decode(tail, skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class HFSampler:
    """Sampling from a transformers causal LM: left-padded batches, ``generate`` with stop strings.

    ``chat=True`` prompts are user messages rendered with the tokenizer's chat
    template (instruction-style steps: Evol-Instruct rewrites and responses);
    ``chat=False`` prompts are plain text continued as a base LM would (the
    Self-Instruct few-shot lists, as the paper prompts GPT-3).
    """

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, top_p: float = 0.9, name: str = "") -> None:
        self.name = name or str(model.config.name_or_path)
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        # the sampler owns its tokenizer: batches are left-padded, with eos as pad when there is none
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._eos = stop_token_ids(model, tokenizer)

    def settings(self) -> dict:
        return {"model": self.name, "temperature": self.temperature, "top_p": self.top_p}

    def _render(self, prompt: str, chat: bool) -> str:
        if chat and self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    @torch.no_grad()
    def complete(self, prompts, *, chat, seed, max_new_tokens, stop=(), greedy=False):
        if not prompts:
            return []
        tok = self.tokenizer
        texts = [self._render(p, chat) for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=not (chat and tok.chat_template))
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=self._eos, pad_token_id=tok.pad_token_id)
        if stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList([StopOnText(tok, stop, enc["input_ids"].shape[1])])
        if greedy or self.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=None)
        torch.manual_seed(seed)
        out = self.model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
        results = []
        for row in out.tolist():
            ended = any(t in self._eos for t in row)
            if ended:
                row = row[: next(i for i, t in enumerate(row) if t in self._eos)]
            text, stopped = cut_at_stop(tok.decode(row, skip_special_tokens=True), stop)
            results.append(Completion(text, truncated=not (ended or stopped)))
        return results


def load_sampler(model: str, *, temperature: float = 0.7, top_p: float = 0.9) -> HFSampler:
    """A sampler on any model ``load_for_inference`` takes: alias, hub name, model or run directory."""
    from mmtune.models.run_outputs import load_for_inference

    lm, tokenizer = load_for_inference(model)
    return HFSampler(lm, tokenizer, temperature=temperature, top_p=top_p, name=model)
