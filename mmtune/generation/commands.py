"""The ``mmtune chat``, ``generate`` and ``eval`` commands: argument handling around the library functions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmtune.errors import ConfigError
from mmtune.generation.cli_args import generation_options, given, media_flags


def load_model_or_proxy(args: argparse.Namespace, model_name: str):
    """``(model or ProxyTuned, tokenizer)`` for ``model_name`` and the proxy flags, with the template installed."""
    from mmtune.data.templates import install_template

    if (args.proxy_expert is None) != (args.proxy_antiexpert is None):
        raise ConfigError("proxy tuning needs both --proxy-expert and --proxy-antiexpert")
    if args.proxy_expert is not None:
        from mmtune.generation.proxy import load_proxy

        model, tokenizer = load_proxy(model_name, args.proxy_expert, args.proxy_antiexpert,
                                      **given(args, "proxy_alpha"))
    else:
        from mmtune.models.run_outputs import load_for_inference

        model, tokenizer = load_for_inference(model_name)
    install_template(tokenizer, getattr(args, "template", None))
    return model, tokenizer


def _describe(args: argparse.Namespace, model_name: str, model) -> str:
    if args.proxy_expert is None:
        return model_name
    return f"proxy({model_name} + {model.alpha} * ({args.proxy_expert} - {args.proxy_antiexpert}))"


def _check_batch_size(args: argparse.Namespace) -> None:
    if getattr(args, "batch_size", 1) < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")


def run_chat(args: argparse.Namespace) -> int:
    from mmtune.generation.chat import run_chat as chat

    model, tokenizer = load_model_or_proxy(args, args.model)
    return chat(model, tokenizer, args.prompt, generation_options(args), system=args.system, media=media_flags(args))


def run_generate(args: argparse.Namespace) -> int:
    from mmtune.generation.batch import PromptItem, generate_to_jsonl, read_prompts

    _check_batch_size(args)
    if (args.prompt is None) == (args.prompts is None):
        raise ConfigError("generate: give either one prompt or --prompts FILE")
    if args.prompts is not None:
        items = read_prompts(Path(args.prompts), system=args.system)
    else:
        head = [{"role": "system", "content": args.system}] if args.system else []
        items = [PromptItem(args.prompt, [*head, {"role": "user", "content": args.prompt}])]
    model, tokenizer = load_model_or_proxy(args, args.model)
    out = Path(args.out) if args.out else None
    rows = generate_to_jsonl(model, tokenizer, items, generation_options(args), out,
                             progress=len(items) > 1, **given(args, "batch_size"))
    if out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from mmtune.evaluation import (
        DEFAULT_METRICS, check_metrics, check_prompt, default_max_new_tokens, evaluate, load_eval_data, sample_targets,
    )

    _check_batch_size(args)
    metrics = check_metrics(getattr(args, "metric", DEFAULT_METRICS))
    check_prompt(getattr(args, "prompt", None))
    data = load_eval_data(args.data, **given(args, "max_samples", "on_bad_sample"),
                          **({"data_format": args.format} if hasattr(args, "format") else {}))
    # what the metrics need of each row (references, choices) is checked before any model is loaded
    sample_targets(data, metrics, **given(args, "group_by", "on_bad_sample"))
    model, tokenizer = load_model_or_proxy(args, args.model)
    opts = generation_options(args)
    if not hasattr(args, "max_new_tokens"):
        opts.max_new_tokens = default_max_new_tokens(metrics)
    report = evaluate(
        model, tokenizer, data, metrics, opts=opts, records=not args.no_records,
        model_name=_describe(args, args.model, model),
        **given(args, "batch_size", "max_length", "number", "tolerance", "prompt", "group_by", "on_bad_sample"),
    )
    if args.out:
        report.write(args.out)
        print(f"{report.summary()}; report in {args.out}", file=sys.stderr)
    else:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        print(report.summary(), file=sys.stderr)
    return 0
