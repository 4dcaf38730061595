"""Command-line flags shared by ``mmtune generate``, ``mmtune eval`` and ``mmtune chat``.

One definition of the decoding and proxy-tuning flags, so the commands spell
them identically. Decoding flags left unset take ``GenerationOptions``'
defaults (filled in when the options are built, so building the parser does
not import torch).
"""

from __future__ import annotations

import argparse


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="auto",
                   help="chat template: auto (the model's own; a trained model's is the one it was trained with) "
                        "or a built-in: alpaca, vicuna_v1, chatml, llama2, plain")
    p.add_argument("--max-new-tokens", type=int, help="most tokens generated per reply (default: 256, GenerationOptions)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default: 1.0, off)")
    p.add_argument("--seed", type=int, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (left-padded)")


def add_proxy_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("proxy tuning", "next-token logits = base + alpha * (expert - antiexpert); the base is --model")
    g.add_argument("--proxy-expert", metavar="PATH", help="tuned small model (run dir, model dir or alias)")
    g.add_argument("--proxy-antiexpert", metavar="PATH", help="the expert's untuned version")
    g.add_argument("--proxy-alpha", type=float, default=1.0, help="strength of the steering (default 1.0)")


def generation_options(args: argparse.Namespace):
    """``GenerationOptions`` from the flags that were given, defaults for the rest."""
    from mmtune.chat import GenerationOptions

    given = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    return GenerationOptions(**{k: v for k, v in given.items() if v is not None})


def load_model_or_proxy(args: argparse.Namespace, model_name: str):
    """``(model or ProxyTuned, tokenizer)`` for ``model_name`` and the proxy flags, with the template installed."""
    from mmtune.data.templates import install_template
    from mmtune.errors import ConfigError

    if (args.proxy_expert is None) != (args.proxy_antiexpert is None):
        raise ConfigError("proxy tuning needs both --proxy-expert and --proxy-antiexpert")
    if args.proxy_expert is not None:
        from mmtune.generation.proxy import load_proxy

        model, tokenizer = load_proxy(model_name, args.proxy_expert, args.proxy_antiexpert, alpha=args.proxy_alpha)
    else:
        from mmtune.models.finetuned import load_for_inference

        model, tokenizer = load_for_inference(model_name)
    install_template(tokenizer, args.template)
    return model, tokenizer
