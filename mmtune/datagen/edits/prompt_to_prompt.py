"""Prompt-to-Prompt on a diffusers Stable Diffusion pipeline: a before/after image pair that differs only by the edit.

Two captions generated separately give two unrelated pictures. Prompt-to-Prompt
(Hertz et al. 2022) makes them one picture before and after an edit: both are
denoised in one batch from the same noise, and for the first steps the edited
caption's generation reuses the attention maps of the input caption's, which
fixes the layout; the remaining steps let the content change. InstructPix2Pix
draws the fraction of shared steps p ~ U[0.1, 0.9] per sample, since how much
structure an edit should keep varies.

What is shared (``share``):

- ``cross``: Prompt-to-Prompt's cross-attention maps. The two captions tokenize
  differently, so each token of the edited caption takes the map of the input
  caption's token it is aligned with (a longest-matching-blocks alignment of the
  token ids, :func:`token_alignment`); a token with no partner (a new word) keeps
  its own map, as Prompt-to-Prompt's "refine" edit does.
- ``self``: the self-attention maps, copied whole; this is what InstructPix2Pix's
  released generator does (its modified ``CrossAttention`` copies the
  self-attention scores of the first prompt to the second).
- ``both`` (default): the two together, Prompt-to-Prompt's own setting.

The mechanism is a diffusers attention processor set on the UNet with
``unet.set_attn_processor``: while sharing is on, it runs diffusers' own
``AttnProcessor`` with the attention probabilities edited between their
computation and their use; otherwise it hands the call to the processor the
UNet had (SDPA by default). The pipeline is diffusers' ``StableDiffusionPipeline``
itself, run on the two captions with one generator per image, both seeded
alike, so the initial latents and every ancestral noise draw are the same for
both; ``callback_on_step_end`` advances the step count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from difflib import SequenceMatcher

import torch

KINDS = {"self": ("self",), "cross": ("cross",), "both": ("self", "cross")}


def shared_step_count(p: float, steps: int) -> int:
    """How many of ``steps`` denoising steps share attention: step i (from 0) does when i / (steps - 1) < p.

    This is InstructPix2Pix's rule (``prompt2prompt_threshold > i / (len(sigmas) - 2)``): the step's position
    in the schedule, from 0 at the first step to 1 at the last, is below p. A single step shares when p > 0.
    """
    span = max(steps - 1, 1)
    return sum(1 for i in range(steps) if i < p * span)


def token_alignment(tokenizer, source: str, target: str) -> torch.Tensor:
    """For each token position of ``target`` (padded to the tokenizer's length), the position in ``source`` whose
    map it takes, or -1 (it keeps its own).

    Equal tokens are matched by difflib's longest matching blocks over the token ids (start and end tokens
    included), so the words the two captions share keep their places; the padding after each caption's end
    token is matched position by position, as the text encoder sees padding there too.
    """
    length = tokenizer.model_max_length
    a = tokenizer(source, truncation=True, max_length=length).input_ids
    b = tokenizer(target, truncation=True, max_length=length).input_ids
    mapping = torch.full((length,), -1, dtype=torch.long)
    for block in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        mapping[block.b: block.b + block.size] = torch.arange(block.a, block.a + block.size)
    pad = torch.arange(len(b), length)
    source_pad = pad - len(b) + len(a)
    fits = source_pad < length
    mapping[pad[fits]] = source_pad[fits]
    return mapping


class AttentionSharing:
    """The state the processors consult: which steps share, the token alignment, and a record of what was shared.

    The batch the UNet sees is a sequence of (input caption, edited caption) pairs: with classifier-free
    guidance, diffusers puts the unconditional pair (the empty prompt twice) first and the conditional pair
    last. In every pair the second image's maps are replaced by the first's; for the unconditional pair the
    two prompts are the same, so its cross-attention alignment is the identity.
    """

    def __init__(self, share: str = "both") -> None:
        if share not in KINDS:
            raise ValueError(f"share must be one of {sorted(KINDS)}, not {share!r}")
        self.kinds = KINDS[share]
        self.shared_steps = 0
        self.step = 0
        self.token_map: torch.Tensor | None = None
        self.record: Counter = Counter()
        """(step, kind) -> attention calls whose maps were shared in that step (for inspection and tests)."""

    def begin(self, shared_steps: int, token_map: torch.Tensor | None) -> None:
        """Start one generation: steps ``[0, shared_steps)`` share."""
        self.shared_steps, self.token_map, self.step = shared_steps, token_map, 0
        self.record = Counter()

    def active(self, kind: str) -> bool:
        return kind in self.kinds and self.step < self.shared_steps

    def on_step_end(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """``callback_on_step_end`` of the pipeline: the next UNet call belongs to step ``step + 1``."""
        self.step = step + 1
        return callback_kwargs

    def edit(self, probs: torch.Tensor, kind: str, heads: int) -> torch.Tensor:
        """Attention probabilities ``[batch * heads, queries, keys]`` with each pair's second maps replaced."""
        self.record[(self.step, kind)] += 1
        batch = probs.shape[0] // heads
        if batch % 2:
            raise RuntimeError(f"Prompt-to-Prompt needs (input, edited) caption pairs; the UNet got {batch} images")
        grouped = probs.view(batch // 2, 2, heads, *probs.shape[1:])
        out = grouped.clone()
        if kind == "self":
            out[:, 1] = grouped[:, 0]
        else:
            out[:-1, 1] = grouped[:-1, 0]  # unconditional pairs: the same (empty) prompt twice
            if self.token_map is None:
                raise RuntimeError("cross-attention sharing needs the captions' token alignment (begin(token_map=...))")
            token_map = self.token_map[: probs.shape[-1]]  # the text encoder's length (the tokenizer's, in SD)
            usable = (token_map >= 0) & (token_map < probs.shape[-1])
            aligned = usable.nonzero().squeeze(1).to(probs.device)
            out[-1, 1, ..., aligned] = grouped[-1, 0, ..., token_map[usable].to(probs.device)]
        return out.view_as(probs)


class _EditedScores:
    """An ``Attention`` module seen through a lens: ``get_attention_scores`` returns the shared maps.

    Everything else is the module's own, so diffusers' ``AttnProcessor`` computes the attention exactly as
    it always does, with only the probabilities changed.
    """

    def __init__(self, attn, sharing: AttentionSharing, kind: str) -> None:
        self._attn, self._sharing, self._kind = attn, sharing, kind

    def __getattr__(self, name: str):
        return getattr(self._attn, name)

    def get_attention_scores(self, query, key, attention_mask=None):
        probs = self._attn.get_attention_scores(query, key, attention_mask)
        return self._sharing.edit(probs, self._kind, self._attn.heads)


class SharedAttentionProcessor:
    """A UNet attention processor: diffusers' ``AttnProcessor`` with shared maps while sharing is on, else the
    processor the layer had."""

    def __init__(self, sharing: AttentionSharing, fallback) -> None:
        from diffusers.models.attention_processor import AttnProcessor

        self.sharing, self.fallback, self.explicit = sharing, fallback, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        kind = "self" if encoder_hidden_states is None else "cross"
        if not self.sharing.active(kind):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return self.explicit(_EditedScores(attn, self.sharing, kind), hidden_states, encoder_hidden_states,
                             attention_mask, temb)


@contextmanager
def prompt_to_prompt(unet, sharing: AttentionSharing) -> Iterator[AttentionSharing]:
    """Every attention layer of ``unet`` shares through ``sharing`` inside the block; the processors it had after."""
    original = unet.attn_processors
    unet.set_attn_processor({name: SharedAttentionProcessor(sharing, proc) for name, proc in original.items()})
    try:
        yield sharing
    finally:
        unet.set_attn_processor(original)


def generate_pair(pipe, sharing: AttentionSharing, source: str, target: str, *, p: float, guidance_scale: float,
                  seed: int, steps: int, resolution: int, output_type: str = "pil") -> tuple:
    """Two images (PIL by default), of ``source`` and of ``target``, from the same seed, sharing maps for the first
    p of the steps.

    Call inside :func:`prompt_to_prompt` (on ``pipe.unet``, with the same ``sharing``). The generators are CPU
    ones, so a seed gives the same noise on any device.
    """
    token_map = token_alignment(pipe.tokenizer, source, target) if "cross" in sharing.kinds else None
    sharing.begin(shared_step_count(p, steps), token_map)
    generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(2)]
    result = pipe([source, target], height=resolution, width=resolution, num_inference_steps=steps,
                  guidance_scale=guidance_scale, generator=generators, callback_on_step_end=sharing.on_step_end,
                  output_type=output_type)
    return result.images[0], result.images[1]
