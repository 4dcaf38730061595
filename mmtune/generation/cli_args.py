"""Command-line flags shared by ``mmtune generate``, ``mmtune eval`` and ``mmtune chat``.

One definition of the decoding, proxy-tuning and media flags, so the commands
spell them identically (a modality's ``--<name>`` flag comes from the registry,
so a new modality has one with no edit here). Flags left unset are absent from
the parsed arguments and take the defaults of
:class:`~mmtune.generation.options.GenerationOptions` and of the functions
they feed (one home per default; the help shows it).
"""

from __future__ import annotations

import argparse

from mmtune.generation.options import BATCH_SIZE, GenerationOptions
from mmtune.modalities import MODALITIES

_DEFAULTS = GenerationOptions()


def add_generation_flags(p: argparse.ArgumentParser, *, batched: bool = True) -> None:
    p.add_argument("--template", default=argparse.SUPPRESS,
                   help="chat template: auto (the model's own, the default; a trained model's is the one it was "
                        "trained with) or a built-in: alpaca, vicuna_v1, chatml, llama2, plain")
    p.add_argument("--max-new-tokens", type=int, default=argparse.SUPPRESS,
                   help=f"most tokens generated per reply (default {_DEFAULTS.max_new_tokens})")
    p.add_argument("--temperature", type=float, default=argparse.SUPPRESS,
                   help=f"0 = greedy (default {_DEFAULTS.temperature})")
    p.add_argument("--top-p", type=float, default=argparse.SUPPRESS,
                   help=f"nucleus sampling mass (default {_DEFAULTS.top_p}: off)")
    p.add_argument("--seed", type=int, default=argparse.SUPPRESS, help=f"sampling seed (default {_DEFAULTS.seed})")
    if batched:
        p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS,
                       help=f"prompts decoded together, left-padded (default {BATCH_SIZE})")


def add_media_flags(p: argparse.ArgumentParser) -> None:
    """``--<modality> PATH`` (repeatable) for every registered modality: ``--image``, ``--video``, ``--audio``."""
    for name, modality in MODALITIES.items():
        p.add_argument(f"--{name}", action="append", default=[], metavar="PATH", dest=name,
                       help=f"{name} file for a model with model.media.{name} (repeat for several "
                            f"{modality.plural}); placed at the first user turn")


def media_flags(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The ``(modality, path)`` items of the media flags, modality by modality in registry order."""
    return [(name, path) for name in MODALITIES for path in getattr(args, name, [])]


def add_proxy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("proxy tuning", "next-token logits = base + alpha * (expert - antiexpert); the base is --model")
    g.add_argument("--proxy-expert", metavar="PATH", help="tuned small model (run dir, model dir or alias)")
    g.add_argument("--proxy-antiexpert", metavar="PATH", help="the expert's untuned version")
    g.add_argument("--proxy-alpha", type=float, default=argparse.SUPPRESS,
                   help="strength of the steering (default {ProxyTuned.alpha})")


def given(args: argparse.Namespace, *names: str) -> dict:
    """The flags among ``names`` that were given on the command line."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """``GenerationOptions`` from the flags that were given, defaults for the rest."""
    return GenerationOptions(**given(args, "max_new_tokens", "temperature", "top_p", "seed"))
