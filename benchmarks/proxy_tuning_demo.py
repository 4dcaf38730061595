#!/usr/bin/env python
"""Demonstration: proxy tuning with a LoRA-tuned SmolLM2 as expert, measured by ``mmtune eval``.

The expert is a run of the default recipe (``configs/smollm2_lora.yaml``), the
anti-expert the untuned SmolLM2-135M-Instruct, and the base — the model being
steered — is the untuned SmolLM2 as well (only one pretrained model is
available offline; in real use the base is a larger model of the same
tokenizer). So at alpha = 1 the proxy equals the expert up to rounding; other
alphas show the steering strength. The held-out set is the run's own
validation split (``data.val_fraction`` with ``train.seed``), rebuilt exactly as
training built it, so no sample was trained on.

Printed and written as JSON: for the base, the expert and the proxy at each
alpha, exact match, numeric accuracy (samples whose gold answer has a number)
and the answer-only loss. This is a script that prints figures, not a test::

    python benchmarks/proxy_tuning_demo.py --run runs/smollm2-lora --out proxy_demo.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def held_out_conversations(run_dir: Path):
    """The validation conversations of a run, selected as ``build_conversation_data`` selected them."""
    import yaml

    from mmtune.config.schema import DataConfig
    from mmtune.data.pipeline import SourceReport, build_conversation_data, conversations_of
    from mmtune.data.sources import resolve_source
    from mmtune.models.run_outputs import load_for_inference

    # Only the data section and the seed matter here; reading just those keeps runs of older versions usable.
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    data_cfg, seed = DataConfig(**raw["data"]), raw["train"]["seed"]
    if data_cfg.val_fraction <= 0:
        raise SystemExit(f"{run_dir}: the run held out no validation data (data.val_fraction = 0)")
    _, tokenizer = load_for_inference(str(run_dir))
    data = build_conversation_data(tokenizer, data_cfg, seed=seed)
    sources = [resolve_source(spec) for spec in data_cfg.datasets]
    convs = [[c for _, c in conversations_of(src, SourceReport(src.name), data_cfg.on_bad_sample)] for src in sources]
    for src, tokenized, all_convs in zip(sources, data.val.sources, convs):
        assert len(tokenized) == len(all_convs), f"{src.name}: samples and conversations disagree"
    return [convs[s][i] for s, i in data.val.refs.tolist()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/smollm2-lora", help="run directory of the default recipe (the expert)")
    p.add_argument("--untuned", default="smollm2-135m-instruct", help="base and anti-expert")
    p.add_argument("--alphas", default="0.5,1,1.5,2")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--out", help="also write every figure (and per-sample predictions) as JSON")
    args = p.parse_args()

    from mmtune.generation.options import GenerationOptions
    from mmtune.evaluation import evaluate
    from mmtune.generation.proxy import check_proxy_compatible, ProxyTuned
    from mmtune.models.run_outputs import load_for_inference

    run = Path(args.run)
    convs = held_out_conversations(run)
    base, tokenizer = load_for_inference(args.untuned)
    expert, expert_tok = load_for_inference(str(run), merge=True)  # merged LoRA: same model, faster decoding
    check_proxy_compatible(base, expert, base, [tokenizer, expert_tok, tokenizer])
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens)
    # One prompt rendering for all: the expert's saved template (the one it was trained with).
    candidates = [("base (untuned)", base), ("expert (LoRA)", expert)]
    alphas = [float(a) for a in args.alphas.split(",")]
    candidates += [(f"proxy alpha={a:g}", ProxyTuned(base, expert, base, alpha=a)) for a in alphas]
    results = {}
    print(f"held-out conversations: {len(convs)} (validation split of {run})")
    for name, model in candidates:
        start = time.perf_counter()
        report = evaluate(model, expert_tok, convs, opts=opts, model_name=name, max_length=512)
        m = report.metrics
        results[name] = report.to_dict() | {"seconds": round(time.perf_counter() - start, 1)}
        print(f"{name:20s} exact {m['exact']['correct']:2d}/{m['exact']['count']}  "
              f"numeric {m['numeric']['correct']}/{m['numeric']['count']}  "
              f"loss {m['loss']['loss']:.4f} (ppl {m['loss']['perplexity']:.2f}, {m['loss']['tokens']} tokens)  "
              f"[{results[name]['seconds']} s]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
