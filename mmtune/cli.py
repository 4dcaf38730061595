"""The ``mmtune`` command: train, chat, generate, eval, export, data inspect, data generate, data selfcorrect.

Expected failures (bad recipe, bad data, missing model) print one line and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import get_args

from mmtune.config.schema import FormatName
from mmtune.errors import MmtuneError
from mmtune.generation.cli_args import add_generation_flags, add_proxy_flags


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtune", description="Instruction tuning for Hugging Face causal LMs.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe: mmtune train RECIPE.yaml [key.sub=value ...]")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")

    c = sub.add_parser("chat", help="chat with a model, a run directory or an exported model")
    c.add_argument("--model", required=True, help="run directory, model directory, hub name or alias")
    c.add_argument("prompt", nargs="?", help="one-shot prompt; interactive when omitted")
    c.add_argument("--system", help="system message")
    c.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image for a multimodal model (repeat for several); placed at the first user turn")
    c.add_argument("--template", default="auto",
                   help="chat template: auto (the model's own; a trained model's is the one it was trained with) "
                        "or a built-in: alpaca, vicuna_v1, chatml, llama2, plain")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    c.add_argument("--top-p", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=0)
    add_proxy_flags(c)

    g = sub.add_parser("generate", help="replies for a prompt file (text: one per line; JSONL) or one prompt, as JSONL")
    g.add_argument("--model", required=True, help="run directory, model directory, hub name or alias")
    g.add_argument("prompt", nargs="?", help="one prompt (instead of --prompts)")
    g.add_argument("--prompts", help="prompt file: .jsonl rows with prompt / messages / instruction, else one per line")
    g.add_argument("--out", help="output JSONL (default: print rows to stdout)")
    g.add_argument("--system", help="system message added to every prompt")
    add_generation_flags(g)
    add_proxy_flags(g)

    v = sub.add_parser("eval", help="exact match / numeric accuracy / loss on held-out data, as a JSON report")
    v.add_argument("model", metavar="RUN_OR_MODEL", help="run directory, model directory, hub name or alias")
    v.add_argument("--data", required=True, help="data file in any training format, or a dataset card name")
    v.add_argument("--format", default="auto", choices=["auto", *get_args(FormatName)],
                   help="data format (default: detected from the first row)")
    v.add_argument("--metric", action="append", choices=["exact", "numeric", "loss"],
                   help="repeatable; default: all three")
    v.add_argument("--out", help="write the JSON report here (default: print it)")
    v.add_argument("--max-samples", type=int, help="evaluate only the first N conversations")
    v.add_argument("--max-length", type=int, default=1024, help="token limit for the loss (as data.max_length)")
    v.add_argument("--number", choices=["first", "last"], default="last", help="which number numeric accuracy compares")
    v.add_argument("--tolerance", type=float, default=1e-6, help="numeric tolerance, relative to the gold's size")
    v.add_argument("--no-records", action="store_true", help="leave per-sample records out of the report")
    add_generation_flags(v)
    add_proxy_flags(v)

    e = sub.add_parser("export", help="merge adapters and write a standard Hugging Face model directory")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.add_argument("--format", choices=("hf", "hf-llava"), default="hf",
                   help="hf: a transformers causal LM (text models); hf-llava: a LlavaForConditionalGeneration "
                        "with processor and tokenizer (multimodal models with an hf CLIP/SigLIP encoder and an "
                        "mlp2x_gelu connector)")

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    di = dsub.add_parser("inspect", help="render samples with trained spans marked, print length statistics")
    di.add_argument("recipe")
    di.add_argument("overrides", nargs="*")
    di.add_argument("--samples", type=int, default=3)
    _add_generate_parser(dsub)
    _add_selfcorrect_parser(dsub)
    return p


def _add_generate_parser(dsub) -> None:
    g = dsub.add_parser(
        "generate", help="synthesize instruction data with a local LM (Self-Instruct or Evol-Instruct)",
        description="Write alpaca JSONL (OUT_DIR/data.jsonl) generated by a local causal LM. Resumable: run the "
                    "same command again to continue; OUT_DIR/state.json keeps progress and filter counters, "
                    "OUT_DIR/report.json the final counts.")
    g.add_argument("method", choices=["self-instruct", "evol-instruct"])
    g.add_argument("out_dir", help="output folder (created; an existing run in it is resumed)")
    g.add_argument("--model", default="smollm2-135m-instruct",
                   help="run directory, model directory, hub name or alias (default: smollm2-135m-instruct)")
    g.add_argument("--seeds", help="self-instruct: seed task JSONL {instruction, instances, is_classification} "
                                   "(default: datasets/self-instruct-seeds.jsonl)")
    g.add_argument("--count", type=int, help="self-instruct: tasks to accept (default 100)")
    g.add_argument("--max-batches", type=int,
                   help="self-instruct: give up after this many batches (default 10 x ceil(count / batch size))")
    g.add_argument("--input", help="evol-instruct: instructions to evolve (default: the self-instruct seed file)")
    g.add_argument("--input-format",
                   help="evol-instruct: self-instruct-seeds (default) or alpaca, sharegpt, openai, dolly ...")
    g.add_argument("--rounds", type=int, help="evol-instruct: evolution rounds (default 1; WizardLM used 4)")
    g.add_argument("--limit", type=int, help="evol-instruct: evolve only the first N instructions")
    g.add_argument("--batch-size", type=int, help="prompts per model call (default 8)")
    g.add_argument("--max-new-tokens", type=int,
                   help="tokens for new instructions: the continued task list / the rewrite (default 128 / 192)")
    g.add_argument("--output-max-new-tokens", type=int,
                   help="tokens for outputs: a task's instances / an evolved instruction's response (default 192 / 384)")
    g.add_argument("--temperature", type=float, help="sampling temperature (default 0.7)")
    g.add_argument("--top-p", type=float, help="nucleus sampling (default 0.9)")
    g.add_argument("--seed", type=int, help="run seed; every batch is seeded from it (default 0)")


def _add_selfcorrect_parser(dsub) -> None:
    s = dsub.add_parser(
        "selfcorrect",
        help="build self_correction training data from a model's own answers to questions with gold answers",
        description="Sample answers, judge them against the gold answer, append self_correction JSONL rows "
                    "(resumable: a restart skips rows already in --out).",
    )
    s.add_argument("questions", help="JSONL file of questions with gold answers")
    s.add_argument("--out", required=True, help="JSONL file to append self_correction rows to")
    s.add_argument("--model", default="smollm2-135m-instruct", help="model directory, run directory, hub name or alias")
    s.add_argument("--judge", default="numeric", help="exact, numeric, or module:function taking (answer, gold)")
    s.add_argument("--system", help="system instruction the answers are generated with (written into every row)")
    s.add_argument("--samples", type=int, default=1, help="answers sampled per question")
    s.add_argument("--batch-size", type=int, default=16, help="questions generated together (and written together)")
    s.add_argument("--max-new-tokens", type=int, default=128, help="cap on the length of a sampled answer")
    s.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    s.add_argument("--seed", type=int, default=0, help="batch b is sampled with seed + b")
    s.add_argument("--limit", type=int, help="use only the first N questions")
    s.add_argument("--id-field", default="id", help="question id column; a row without it is identified by its line number")
    s.add_argument("--question-field", default="question", help="question column")
    s.add_argument("--answer-field", default="answer", help="gold answer column")
    s.add_argument("--revision-field", help="worked-solution column used as the revised answer (default: the gold)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft calls a transformers property that warns on every model load; it is not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        return _dispatch(args)
    except MmtuneError as exc:
        first, *rest = str(exc).splitlines() or [""]
        print("\n".join([f"mmtune: error: {first}", *(f"  {line}" for line in rest)]), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmtune: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from mmtune.config.loader import load_recipe

    if args.command == "train":
        from mmtune.training.recipe import train

        result = train(load_recipe(args.recipe, args.overrides))
        print(f"trained {result.steps} steps; final loss {result.final_loss:.4f}; model in {result.final_dir}")
        return 0
    if args.command == "chat":
        from mmtune.chat import GenerationOptions, run_chat
        from mmtune.generation.cli_args import load_model_or_proxy

        model, tokenizer = load_model_or_proxy(args, args.model)
        opts = GenerationOptions(args.max_new_tokens, args.temperature, args.top_p, args.seed)
        return run_chat(model, tokenizer, args.prompt, opts, system=args.system, images=args.image)
    if args.command in ("generate", "eval"):
        from mmtune.generation.commands import run_eval, run_generate

        return (run_generate if args.command == "generate" else run_eval)(args)
    if args.command == "export":
        if args.format == "hf-llava":
            from mmtune.vision.export_llava import export_llava

            out = export_llava(args.run_dir, args.out_dir)
        else:
            from mmtune.models.finetuned import export_hf

            out = export_hf(args.run_dir, args.out_dir)
        print(f"exported to {out}")
        return 0
    if args.command == "data" and args.data_command == "inspect":
        from mmtune.data.inspect import inspect_data

        recipe = load_recipe(args.recipe, args.overrides)
        print(inspect_data(recipe, samples=args.samples, color=sys.stdout.isatty()))
        return 0
    if args.command == "data" and args.data_command == "generate":
        return _generate(args)
    if args.command == "data" and args.data_command == "selfcorrect":
        from mmtune.data.build_self_correction import QuestionFields, build_self_correction
        from mmtune.data.judges import resolve_judge

        report = build_self_correction(
            args.questions, args.out, model=args.model, judge=resolve_judge(args.judge),
            fields=QuestionFields(args.id_field, args.question_field, args.answer_field, args.revision_field),
            system=args.system, samples_per_question=args.samples, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            limit=args.limit,
        )
        print("\n".join(report.lines()))
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _generate(args: argparse.Namespace) -> int:
    """Flags left out keep the defaults of the options dataclasses (their one home)."""
    from pathlib import Path

    from mmtune import datagen

    def given(**pairs):
        return {k: v for k, v in pairs.items() if v is not None}

    sampler = datagen.load_sampler(args.model, **given(temperature=args.temperature, top_p=args.top_p))
    common = given(batch_size=args.batch_size, seed=args.seed, max_new_tokens=args.max_new_tokens)
    if args.method == "self-instruct":
        opts = datagen.SelfInstructOptions(**common, **given(
            count=args.count, max_batches=args.max_batches, seeds=args.seeds and Path(args.seeds),
            instance_max_new_tokens=args.output_max_new_tokens))
        report = datagen.self_instruct(Path(args.out_dir), sampler, opts)
    else:
        opts = datagen.EvolInstructOptions(**common, **given(
            input=args.input and Path(args.input), input_format=args.input_format, rounds=args.rounds,
            limit=args.limit, response_max_new_tokens=args.output_max_new_tokens))
        report = datagen.evol_instruct(Path(args.out_dir), sampler, opts)
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
