"""The ``mmtune generate`` and ``mmtune eval`` commands: argument handling around the library functions."""

from __future__ import annotations

import argparse
import json
import sys

from mmtune.errors import ConfigError
from mmtune.generation.cli_args import generation_options, load_model_or_proxy


def _describe(args: argparse.Namespace, model_name: str) -> str:
    if args.proxy_expert is None:
        return model_name
    return (f"proxy({model_name} + {args.proxy_alpha} * ({args.proxy_expert} - {args.proxy_antiexpert}))")


def _check_batch_size(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")


def run_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

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
                             batch_size=args.batch_size, progress=len(items) > 1)
    if out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(f"wrote {len(rows)} rows to {out}", file=sys.stderr)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from mmtune.evaluation import METRICS, evaluate, load_eval_data

    _check_batch_size(args)
    data = load_eval_data(args.data, data_format=args.format, max_samples=args.max_samples)  # fail before loading models
    model, tokenizer = load_model_or_proxy(args, args.model)
    report = evaluate(
        model, tokenizer, data, args.metric or METRICS, generation_options(args), batch_size=args.batch_size,
        max_length=args.max_length, number=args.number, tolerance=args.tolerance,
        records=not args.no_records, model_name=_describe(args, args.model),
    )
    if args.out:
        report.write(args.out)
        print(f"{report.summary()}; report in {args.out}", file=sys.stderr)
    else:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        print(report.summary(), file=sys.stderr)
    return 0
