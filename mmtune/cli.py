"""The ``mmtune`` command: train, chat, serve, generate, eval, edit, export, report, data inspect / generate / selfcorrect.

Expected failures (bad recipe, bad data, missing model) print one line and
exit 2; anything else is a bug and keeps its traceback. Flags left unset are
absent from the parsed arguments, so every default keeps its one home (the
options dataclasses and function signatures; the help shows them).

Several processes: ``mmtune train --nproc N ...`` on one machine (torchrun
underneath), ``torchrun`` or ``accelerate launch -m mmtune.cli train ...``
across machines; only the main process prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import get_args

from mmtune.config.schema import DEFAULT_MODEL, FormatName, OnBadSample
from mmtune.errors import MmtuneError
from mmtune.generation.cli_args import add_generation_flags, add_media_flags, add_proxy_flags, given

SUPPRESS = argparse.SUPPRESS


class _Defaults(dict):
    """``{Owner.field}`` in a help text -> that default, read from its one home when help is shown.

    The owners (options dataclasses, function signatures) import torch; the parser is built for every
    command, so they are looked up only when a help text is formatted.
    """

    def __missing__(self, owner: str):
        import inspect
        from types import SimpleNamespace

        from mmtune import datagen, evaluation
        from mmtune.data.inspect import inspect_data
        from mmtune.datagen.self_correction import QuestionFields, build_self_correction
        from mmtune.datagen.synth import (
            build_av_sync,
            build_event_order,
            build_motion,
            build_pitch,
            build_shapes,
            build_shapes_pick,
            generate_synth,
        )
        from mmtune.evaluation import evaluate
        from mmtune.generation.edit import EditOptions
        from mmtune.generation.options import GenerationOptions
        from mmtune.generation.proxy import ProxyTuned
        from mmtune.reporting.options import ReportOptions

        def signature(fn):
            return SimpleNamespace(**{k: p.default for k, p in inspect.signature(fn).parameters.items()})

        from mmtune.datagen.edits.options import EditGenOptions

        owners = {"SelfInstructOptions": datagen.SelfInstructOptions(), "EvolInstructOptions": datagen.EvolInstructOptions(),
                  "EditGenOptions": EditGenOptions(),
                  "QuestionFields": QuestionFields(), "build_self_correction": signature(build_self_correction),
                  "evaluate": signature(evaluate), "inspect_data": signature(inspect_data),
                  "load_sampler": signature(datagen.load_sampler), "ProxyTuned": ProxyTuned,
                  "evaluation": evaluation, "GenerationOptions": GenerationOptions(), "EditOptions": EditOptions(),
                  "ReportOptions": ReportOptions()}
        owners.update({"generate_synth": signature(generate_synth), "build_shapes": signature(build_shapes),
                       "build_shapes_pick": signature(build_shapes_pick), "build_motion": signature(build_motion),
                       "build_event_order": signature(build_event_order), "build_av_sync": signature(build_av_sync),
                       "build_pitch": signature(build_pitch)})
        self.update(owners)
        return owners[owner]


class _HelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action):  # the hook ArgumentDefaultsHelpFormatter uses
        return (action.help or "").format_map(_Defaults())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtune", description="Instruction tuning for Hugging Face causal LMs.",
                                formatter_class=_HelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = _with_formatter(sub.add_parser)

    t = sub.add_parser("train", help="train a recipe (or a multi-stage recipe, stage by stage): "
                                     "mmtune train RECIPE.yaml [key.sub=value ...]")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=10")
    t.add_argument("--nproc", type=_positive_int, default=SUPPRESS, metavar="N",
                   help="train as N processes of this machine (torchrun underneath; how they share the model is "
                        "train.distributed). Several machines: torchrun or accelerate launch, see the README")

    c = sub.add_parser("chat", help="chat with a model, a run directory or an exported model")
    c.add_argument("--model", required=True, help="run directory, model directory, hub name or alias")
    c.add_argument("prompt", nargs="?", help="one-shot prompt; interactive when omitted")
    c.add_argument("--system", help="system message")
    add_media_flags(c)
    add_generation_flags(c, batched=False)
    add_proxy_flags(c)

    from mmtune.serving.command import add_serve_arguments

    add_serve_arguments(sub.add_parser("serve", help="an OpenAI-compatible API (/v1/chat/completions) and a browser "
                                                     "chat page for a model, a run directory or an exported model"))

    g = sub.add_parser("generate", help="replies for a prompt file (text: one per line; JSONL) or one prompt, as JSONL")
    g.add_argument("--model", required=True, help="run directory, model directory, hub name or alias")
    g.add_argument("prompt", nargs="?", help="one prompt (instead of --prompts)")
    g.add_argument("--prompts", help="prompt file: .jsonl rows with prompt / messages / instruction (+ a list of "
                                     "paths per modality: images, videos, audios), else one prompt per line")
    g.add_argument("--out", help="output JSONL (default: print rows to stdout)")
    g.add_argument("--system", help="system message added to every prompt")
    add_generation_flags(g)
    add_proxy_flags(g)

    v = sub.add_parser(
        "eval", help="exact match / numeric accuracy / loss, or VQA accuracy / multiple choice / CIDEr, on held-out "
                     "data, as a JSON report",
        description="Answers each conversation's last user turn and judges the answers. Decoding is greedy (or "
                    "sampled with --temperature); LAVIS evaluates InstructBLIP with beam search (5 beams), which "
                    "mmtune does not do, so its figures can differ slightly from published ones.")
    v.add_argument("model", metavar="RUN_OR_MODEL", help="run directory, model directory, hub name or alias")
    v.add_argument("--data", required=True, help="data file in any training format, or a dataset card name")
    v.add_argument("--format", default=SUPPRESS, choices=["auto", *get_args(FormatName)],
                   help="data format (default: auto, detected from the first row)")
    v.add_argument("--metric", action="append", default=SUPPRESS,
                   help="repeatable; one of {evaluation.METRICS} (default {evaluate.metrics}). vqa: VQAv2 "
                        "accuracy against the row's "
                        "'references' (all human answers); choice: multiple-choice accuracy over the row's "
                        "'choices' (by letter or text); cider: CIDEr-D of a caption against the row's "
                        "'references' (else its gold answer)")
    v.add_argument("--prompt", default=SUPPRESS, metavar="TEMPLATE",
                   help="rewrite the last user turn: '{{}}' stands for its text, e.g. 'Question: {{}} Short answer:' "
                        "(LAVIS's VQA prompt); without '{{}}' the template replaces it (e.g. 'A short image "
                        "caption.'); media stay. Default: the data's own prompt")
    v.add_argument("--group-by", default=SUPPRESS, metavar="KEY",
                   help="also report every figure per value of this row key (e.g. question_type)")
    v.add_argument("--on-bad-sample", choices=get_args(OnBadSample), default=SUPPRESS,
                   help="a row that is malformed or lacks what a metric needs (references, choices): stop with one "
                        "line naming it (error) or leave it out and count it (skip); default {evaluate.on_bad_sample}")
    v.add_argument("--out", help="write the JSON report here (default: print it)")
    v.add_argument("--max-samples", type=int, default=SUPPRESS, help="evaluate only the first N conversations")
    v.add_argument("--max-length", type=int, default=SUPPRESS,
                   help="token limit for the loss (default: data.max_length's default)")
    v.add_argument("--number", choices=["first", "last"], default=SUPPRESS,
                   help="which number numeric accuracy compares (default {evaluate.number})")
    v.add_argument("--tolerance", type=float, default=SUPPRESS,
                   help="numeric tolerance, relative to the gold's size (default {evaluate.tolerance})")
    v.add_argument("--no-records", action="store_true", help="leave per-sample records out of the report")
    add_generation_flags(v)
    _action(v, "max_new_tokens").help = (
        "most tokens generated per answer (default: {evaluation.SHORT_ANSWER_MAX_NEW_TOKENS} with vqa or choice, "
        "LAVIS's InstructBLIP VQA max_len; {evaluation.CAPTION_MAX_NEW_TOKENS} with cider, its caption max_len; "
        "else {GenerationOptions.max_new_tokens})")
    add_proxy_flags(v)

    ed = sub.add_parser(
        "edit", help="edit an image by an instruction with an InstructPix2Pix model (a task: edit run)",
        description="Runs diffusers' StableDiffusionInstructPix2PixPipeline with the paper's two-scale guidance: "
                    "eps_u + s_I (eps_img - eps_u) + s_T (eps_full - eps_img), s_T = --text-guidance, "
                    "s_I = --image-guidance. The output has the input's size, each side rounded down to the VAE's "
                    "factor (8 for Stable Diffusion), unless --resolution is given.",
        argument_default=SUPPRESS)
    ed.add_argument("--model", required=True,
                    help="an edit run directory, its final/, or a diffusers InstructPix2Pix directory "
                         "(mmtune export --format diffusers)")
    ed.add_argument("--image", required=True, metavar="PATH", help="the image to edit")
    ed.add_argument("instruction", help='the edit, e.g. "make it snowy"')
    ed.add_argument("--out", required=True, metavar="PATH", help="where the edited image is written (.png, .jpg ...)")
    ed.add_argument("--text-guidance", type=float, help="s_T (default {EditOptions.text_guidance})")
    ed.add_argument("--image-guidance", type=float, help="s_I (default {EditOptions.image_guidance})")
    ed.add_argument("--steps", type=int, help="denoising steps (default {EditOptions.steps})")
    ed.add_argument("--seed", type=int, help="same seed, same image (default {EditOptions.seed})")
    ed.add_argument("--resolution", type=int, metavar="PX",
                    help="scale the image so its longer side is PX first (default: its own size)")
    ed.add_argument("--device", help="auto, cpu or cuda (default {EditOptions.device})")

    rp = sub.add_parser(
        "report", help="one self-contained HTML page of a run: curves, data report, trainable parameters, "
                       "validation samples answered by final/",
        argument_default=SUPPRESS)
    rp.add_argument("run_dir", help="a run directory (or a multi-stage run's directory)")
    rp.add_argument("--out", metavar="FILE", help="where the page goes (default: RUN_DIR/report.html)")
    rp.add_argument("--samples", type=int, metavar="N",
                    help="validation samples answered greedily by final/ (default {ReportOptions.samples}; 0: none)")
    rp.add_argument("--max-new-tokens", type=int, metavar="N",
                    help="most tokens per answer (default {ReportOptions.max_new_tokens})")
    rp.add_argument("--steps", type=int, dest="edit_steps", metavar="N",
                    help="denoising steps of an edit run's outputs (default {EditOptions.steps})")
    rp.add_argument("--device", help="auto, cpu or cuda (default {ReportOptions.device})")

    e = sub.add_parser("export", help="merge adapters and write a standard Hugging Face model directory")
    e.add_argument("run_dir")
    e.add_argument("out_dir")
    e.add_argument("--format", default=SUPPRESS,
                   help="an export format of mmtune.interop.EXPORTERS; default: the model family's own "
                        "(hf: a transformers causal LM for text models; hf-llava: a LlavaForConditionalGeneration "
                        "with processor and tokenizer for image models with an hf CLIP/SigLIP encoder and an "
                        "mlp2x_gelu connector; hf-instructblip / hf-blip2: an InstructBlipForConditionalGeneration "
                        "/ Blip2ForConditionalGeneration for image models with an hf InstructBLIP/BLIP-2 vision "
                        "model and a qformer connector, instruction-aware or not; hf-instructblipvideo: an "
                        "InstructBlipVideoForConditionalGeneration for a video model of that kind whose Q-Former runs "
                        "per frame; any other video or audio model has no Hugging Face format and stays in mmtune's; "
                        "diffusers: a StableDiffusionInstructPix2PixPipeline directory, the one format of an "
                        "image-editing run)")
    e.add_argument("--keep-lora", action="store_true",
                   help="image-editing LoRA runs: keep the UNet's LoRA as diffusers LoRA weights "
                        "(pytorch_lora_weights.safetensors beside the base unet/, for load_lora_weights) instead "
                        "of merging it")

    h = sub.add_parser("hint", help="HINT runs (task: hint): a hypernetwork that turns an instruction into adapters")
    hsub = h.add_subparsers(dest="hint_command", required=True)
    hsub.add_parser = _with_formatter(hsub.add_parser)
    ha = hsub.add_parser("adapt", help="generate one instruction's adapters once and write them as a standard peft "
                                       "adapter (LoRA; with a generated prefix, prefix tuning on ADAPTER_DIR/base, the "
                                       "base with the LoRA merged): it loads with peft alone")
    ha.add_argument("run_dir", help="a hint run directory (or its final/)")
    ha.add_argument("--instruction", required=True, help="the task's definition, as the training tasks' were written")
    ha.add_argument("--examples", metavar="FILE",
                    help="positive examples read with the instruction: a JSON / JSONL list of {{input, output}}, or "
                         "an sni task file (its Positive Examples)")
    ha.add_argument("--out", required=True, metavar="ADAPTER_DIR")

    d = sub.add_parser("data", help="data tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dsub.add_parser = _with_formatter(dsub.add_parser)
    di = dsub.add_parser("inspect", help="render samples with trained spans marked, print length statistics")
    di.add_argument("recipe")
    di.add_argument("overrides", nargs="*")
    di.add_argument("--samples", type=int, default=SUPPRESS, help="samples shown (default {inspect_data.samples})")
    _add_generate_parser(dsub)
    _add_selfcorrect_parser(dsub)
    _add_synth_parser(dsub)
    return p


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    """The parser's action for ``dest`` (to adjust a shared flag's help for one command)."""
    return next(a for a in parser._actions if a.dest == dest)


def _with_formatter(add_parser):
    """Subcommands format their help like the main parser (defaults filled from their homes)."""

    def add(*args, **kwargs):
        return add_parser(*args, formatter_class=_HelpFormatter, **kwargs)

    return add


def _add_generate_parser(dsub) -> None:
    g = dsub.add_parser(
        "generate", help="synthesize instruction data with a local LM (Self-Instruct or Evol-Instruct), or "
                         "InstructPix2Pix editing triplets (edits)",
        description="Write alpaca JSONL (OUT_DIR/data.jsonl) generated by a local causal LM. Resumable: run the "
                    "same command again to continue; OUT_DIR/state.json keeps progress and filter counters, "
                    "OUT_DIR/report.json the final counts. edits: InstructPix2Pix's pipeline with local models: the "
                    "LLM writes (edit, edited caption) for each caption, Stable Diffusion with Prompt-to-Prompt draws "
                    "--samples image pairs per caption pair, the CLIP filter keeps the best --keep; written in "
                    "diffusers' triplet layout (OUT/metadata.jsonl, OUT/images/, card OUT/triplets.yaml), resumable "
                    "the same way.", argument_default=SUPPRESS)
    g.add_argument("method", choices=["self-instruct", "evol-instruct", "edits"])
    g.add_argument("out_dir", nargs="?", help="output folder (created; an existing run in it is resumed)")
    g.add_argument("--model", "--llm", help=f"run directory, model directory, hub name or alias (default: "
                                            f"{DEFAULT_MODEL}); edits: the LLM that writes the edit text")
    g.add_argument("--seeds", help="self-instruct: seed task JSONL {{instruction, instances, is_classification}} "
                                   "(default: {SelfInstructOptions.seeds})")
    g.add_argument("--count", type=int, help="self-instruct: tasks to accept (default {SelfInstructOptions.count})")
    g.add_argument("--max-batches", type=int,
                   help="self-instruct: give up after this many batches (default: ten times the batches --count "
                        "needs if every prompt gave one task)")
    g.add_argument("--input", help="evol-instruct: instructions to evolve (default: the self-instruct seed file)")
    g.add_argument("--input-format",
                   help="evol-instruct: self-instruct-seeds or alpaca, sharegpt, openai, dolly ... "
                        "(default {EvolInstructOptions.input_format})")
    g.add_argument("--rounds", type=int,
                   help="evol-instruct: evolution rounds (default {EvolInstructOptions.rounds}; WizardLM used 4)")
    g.add_argument("--limit", type=int, help="evol-instruct: evolve only the first N instructions; edits: use only "
                                             "the first N captions")
    g.add_argument("--batch-size", type=int, help="prompts per model call (default {SelfInstructOptions.batch_size})")
    g.add_argument("--max-new-tokens", type=int,
                   help="tokens for new instructions: the continued task list / the rewrite (default "
                        "{SelfInstructOptions.max_new_tokens} / {EvolInstructOptions.max_new_tokens})")
    g.add_argument("--output-max-new-tokens", type=int,
                   help="tokens for outputs: a task's instances / an evolved instruction's response (default "
                        "{SelfInstructOptions.instance_max_new_tokens} / {EvolInstructOptions.response_max_new_tokens})")
    g.add_argument("--temperature", type=float, help="sampling temperature (default {load_sampler.temperature})")
    g.add_argument("--top-p", type=float, help="nucleus sampling (default {load_sampler.top_p})")
    g.add_argument("--seed", type=int, help="run seed; every batch is seeded from it (default {SelfInstructOptions.seed})")
    _add_edits_flags(g)


def _add_edits_flags(g) -> None:
    """``data generate edits``: its own flags, in a group of their own (defaults: ``EditGenOptions``)."""
    e = g.add_argument_group("edits (InstructPix2Pix data; --model/--llm, --batch-size, --max-new-tokens, "
                             "--temperature, --top-p and --seed apply to its edit-text stage)")
    e.add_argument("--captions", metavar="FILE",
                   help="captions to edit: one per line, or JSONL rows with caption (or input) and optionally both "
                        "edit and output (then the LLM is not asked). The edit-text defaults: --batch-size "
                        "{EditGenOptions.batch_size}, --max-new-tokens {EditGenOptions.max_new_tokens}, --temperature "
                        "{EditGenOptions.temperature}, --top-p {EditGenOptions.top_p}, --seed {EditGenOptions.seed}")
    e.add_argument("--out", dest="out_dir", metavar="DIR", help="output folder (same as OUT_DIR)")
    e.add_argument("--sd", metavar="MODEL", help="Stable Diffusion: a diffusers directory, a cached hub name or "
                                                 "tiny-stable-diffusion (default {EditGenOptions.sd})")
    e.add_argument("--scheduler",
                   help="sampler: euler_ancestral (Euler ancestral, as the paper) or model (the model's own; "
                        "default {EditGenOptions.scheduler})")
    e.add_argument("--steps", type=int, help="denoising steps per image (default {EditGenOptions.steps})")
    e.add_argument("--resolution", type=int, metavar="PX", help="image side (default {EditGenOptions.resolution})")
    e.add_argument("--samples", type=int, metavar="N",
                   help="image pairs drawn per caption pair before filtering (default {EditGenOptions.samples})")
    e.add_argument("--keep", type=int, metavar="K",
                   help="most pairs kept per caption pair, best directional similarity first "
                        "(default {EditGenOptions.keep})")
    e.add_argument("--p2p", type=float, nargs=2, metavar=("LOW", "HIGH"), dest="p2p_range",
                   help="p ~ U[LOW, HIGH]: fraction of the first denoising steps that share attention maps "
                        "(default {EditGenOptions.p2p_range})")
    e.add_argument("--guidance", type=float, nargs=2, metavar=("LOW", "HIGH"), dest="guidance_range",
                   help="classifier-free guidance scale ~ U[LOW, HIGH] (default {EditGenOptions.guidance_range})")
    e.add_argument("--share",
                   help="attention maps shared: cross (Prompt-to-Prompt's word-aligned cross-attention), self (the "
                        "self-attention InstructPix2Pix's generator copies) or both (default {EditGenOptions.share})")
    e.add_argument("--clip", metavar="MODEL", help="open_clip model name, local open_clip directory, "
                                                   "local-dir: / hf-hub: name, or tiny-open-clip "
                                                   "(default {EditGenOptions.clip})")
    e.add_argument("--clip-pretrained", metavar="TAG|FILE",
                   help="pretrained tag or checkpoint of a named --clip model, none for random weights "
                        "(default {EditGenOptions.clip_pretrained})")
    e.add_argument("--min-caption-sim", type=float, metavar="T",
                   help="keep a pair only if both images have CLIP similarity >= T to their caption "
                        "(default {EditGenOptions.min_caption_sim})")
    e.add_argument("--min-direction-sim", type=float, metavar="T",
                   help="... and cos(image change, caption change) >= T (default {EditGenOptions.min_direction_sim})")
    e.add_argument("--min-image-sim", type=float, metavar="T",
                   help="... and the two images' similarity >= T (default {EditGenOptions.min_image_sim})")
    e.add_argument("--device", help="cuda, cpu ... (default: cuda when available)")
    e.add_argument("--dtype",
                   help="Stable Diffusion's dtype: float32, float16 or bfloat16 (default {EditGenOptions.dtype})")


def _add_selfcorrect_parser(dsub) -> None:
    s = dsub.add_parser(
        "selfcorrect",
        help="build self_correction training data from a model's own answers to questions with gold answers",
        description="Sample answers, judge them against the gold answer, append self_correction JSONL rows "
                    "(resumable: a restart skips rows already in --out).", argument_default=SUPPRESS,
    )
    s.add_argument("questions", help="JSONL file of questions with gold answers")
    s.add_argument("--out", required=True, help="JSONL file to append self_correction rows to")
    s.add_argument("--model", help=f"model directory, run directory, hub name or alias (default {DEFAULT_MODEL})")
    s.add_argument("--judge", help="exact, numeric, or module:function taking (answer, gold) "
                                   "(default {build_self_correction.judge})")
    s.add_argument("--system", help="system instruction the answers are generated with (written into every row)")
    s.add_argument("--samples", type=int, dest="samples_per_question",
                   help="answers sampled per question (default {build_self_correction.samples_per_question})")
    s.add_argument("--batch-size", type=int, help="questions generated together, and written together "
                                                   "(default {build_self_correction.batch_size})")
    s.add_argument("--max-new-tokens", type=int,
                   help="cap on the length of a sampled answer (default {build_self_correction.max_new_tokens})")
    s.add_argument("--temperature", type=float, help="0 = greedy (default {build_self_correction.temperature})")
    s.add_argument("--top-p", type=float, help="nucleus sampling threshold (default {build_self_correction.top_p})")
    s.add_argument("--seed", type=int, help="batch b is sampled with seed + b (default {build_self_correction.seed})")
    s.add_argument("--limit", type=int, help="use only the first N questions")
    s.add_argument("--id-field", dest="id", help="question id column (default {QuestionFields.id}); a row without it "
                                                  "is identified by its line number")
    s.add_argument("--question-field", dest="question", help="question column (default {QuestionFields.question})")
    s.add_argument("--answer-field", dest="answer", help="gold answer column (default {QuestionFields.answer})")
    s.add_argument("--revision-field", dest="revision",
                   help="worked-solution column used as the revised answer (default: the gold)")


def _add_synth_parser(dsub) -> None:
    s = dsub.add_parser(
        "synth", help="write a synthetic media question set (train + held-out, LLaVA format) a model learns on a CPU",
        description="Seeded synthetic media with one-word questions, in LLaVA format: OUT/train.json and "
                    "OUT/heldout.json (held-out media never appear in train), a dataset card per split "
                    "(OUT/train.yaml, OUT/heldout.yaml), OUT/synth.json (counts, answer distributions, chance per "
                    "question type) and OUT/README.md (the data card). --blank DIR also writes the control: the "
                    "same rows with every media file blank (grey images and frames, silent sound). Tasks: shapes "
                    "(colour / shape / count / position questions about 1-3 coloured shapes), shapes-pick (the "
                    "question picks one of several objects: the answer depends on the question); clips (mp4, "
                    "<video>): motion (which way a shape moves), event-order (which of two flashes comes first), "
                    "av-sync (does the beep of the clip's sound track sound when the ball bounces); sounds (16 kHz "
                    "WAV, <audio>): pitch (rising or falling sweep), loudness (is the first or second tone louder).",
        argument_default=SUPPRESS)
    s.add_argument("task", help="shapes, shapes-pick, motion, event-order, av-sync, pitch or loudness "
                                "(mmtune.datagen.synth.SYNTH_TASKS)")
    s.add_argument("--out", required=True, dest="out_dir", metavar="DIR", help="output folder (new or empty)")
    s.add_argument("--train", type=int, metavar="N", help="train images (default {generate_synth.train}), "
                                                          "or clips, or sounds")
    s.add_argument("--heldout", type=int, metavar="N", help="held-out images (default {generate_synth.heldout}), "
                                                          "or clips, or sounds")
    s.add_argument("--seed", type=int, metavar="S", help="same seed, same files (default {generate_synth.seed})")
    s.add_argument("--questions-per-item", type=int, metavar="Q",
                   help="questions (rows) per image, question types taking turns "
                        "(default {generate_synth.questions_per_item})")
    s.add_argument("--question-types", metavar="LIST",
                   help="comma list; default: all of the task's (shapes: color,shape,count,position; "
                        "shapes-pick: color,shape)")
    s.add_argument("--image-size", type=int, metavar="PX", help="image side in px (default {build_shapes.image_size})")
    s.add_argument("--grid", type=int, help="objects sit in distinct cells of a GRID x GRID grid, 2 or 3 "
                                            "(default {build_shapes.grid})")
    s.add_argument("--objects", metavar="K|MIN-MAX",
                   help="objects per image, K or MIN-MAX (default: shapes {build_shapes.objects}, "
                        "shapes-pick {build_shapes_pick.objects})")
    s.add_argument("--colors", metavar="LIST",
                   help="comma list of red, green, blue, yellow, purple, orange, white, black "
                        "(default {build_shapes.colors})")
    s.add_argument("--shapes", metavar="LIST",
                   help="comma list of circle, square, triangle, cross, diamond (default: shapes "
                        "{build_shapes.shapes}; shapes-pick {build_shapes_pick.shapes})")
    s.add_argument("--frame-size", type=int, metavar="PX",
                   help="clip tasks: frame side in px, a multiple of 32 (default {build_motion.frame_size})")
    s.add_argument("--frames", type=int, metavar="N",
                   help="clip tasks: frames per clip (default: motion {build_motion.frames}, event-order "
                        "{build_event_order.frames}, av-sync {build_av_sync.frames})")
    s.add_argument("--fps", type=int, metavar="F", help="clip tasks: frames per second (default {build_motion.fps})")
    s.add_argument("--duration", type=float, metavar="S",
                   help="sound tasks: seconds per sound, 16 kHz mono (default {build_pitch.duration})")
    s.add_argument("--blank", metavar="DIR",
                   help="also write the media-blanked control (the same JSON, every image or frame uniform grey, "
                        "every sound silent) into DIR")
    s.add_argument("--blank-only", choices=["frames", "sound"],
                   help="av-sync: blank only the frames or only the sound track in the --blank control "
                        "(default: both)")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier synth output in --out / --blank")


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
        from mmtune import train  # the Python API's path: the report too, with train.report
        from mmtune.config.stages import MultiStagePlan, load_training

        loaded = load_training(args.recipe, args.overrides)  # checked once, before any process starts
        if given(args, "nproc"):  # 1 too: a process group of one (DeepSpeed on one GPU needs it)
            from mmtune.training.distributed import launch_processes

            return launch_processes(args.nproc, ["train", args.recipe, *args.overrides])
        if isinstance(loaded, MultiStagePlan):  # a multi-stage recipe: one run per stage, then the forgetting report
            from mmtune.sequential import run_stages

            stages = run_stages(loaded)
            if stages.report is not None:
                print(f"{len(stages.run_dirs)} stages ({len(stages.trained)} trained now) in {loaded.output_dir}; "
                      f"forgetting report: {stages.report} (and forgetting.md)")
            return 0
        result = train(loaded)
        if result.is_main:
            print(f"trained {result.steps} steps; final loss {result.final_loss:.4f}; model in {result.final_dir}")
        return 0
    if args.command == "report":
        from mmtune.reporting import ReportOptions, write_report

        options = ReportOptions(**given(args, "samples", "max_new_tokens", "edit_steps", "device"))
        print(f"wrote {write_report(args.run_dir, **given(args, 'out'), options=options)}")
        return 0
    if args.command in ("chat", "generate", "eval"):
        from mmtune.generation import commands

        return {"chat": commands.run_chat, "generate": commands.run_generate, "eval": commands.run_eval}[
            args.command](args)
    if args.command == "serve":
        from mmtune.serving.command import run_serve

        return run_serve(args)
    if args.command == "export":
        return _export(args)
    if args.command == "hint":
        return _hint_adapt(args)
    if args.command == "edit":
        return _edit(args)
    if args.command == "data" and args.data_command == "inspect":
        from mmtune.data.inspect import inspect_data

        recipe = load_recipe(args.recipe, args.overrides)
        print(inspect_data(recipe, color=sys.stdout.isatty(), **given(args, "samples")))
        return 0
    if args.command == "data" and args.data_command == "generate":
        return _generate(args)
    if args.command == "data" and args.data_command == "synth":
        return _synth(args)
    if args.command == "data" and args.data_command == "selfcorrect":
        from mmtune.datagen.self_correction import QuestionFields, build_self_correction

        fields = QuestionFields(**given(args, "id", "question", "answer", "revision"))
        options = given(args, "model", "judge", "system", "samples_per_question", "batch_size", "max_new_tokens",
                        "temperature", "top_p", "seed", "limit")
        report = build_self_correction(args.questions, args.out, fields=fields, **options)
        print("\n".join(report.lines()))
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _export(args: argparse.Namespace) -> int:
    from mmtune.errors import ConfigError
    from mmtune.interop import EXPORTERS, default_format
    from mmtune.models.run_outputs import load_for_export

    fmt = getattr(args, "format", None)
    if fmt is not None and fmt not in EXPORTERS:
        raise ConfigError(f"export --format: unknown format '{fmt}' (valid: {', '.join(EXPORTERS)})")
    model, tokenizer = load_for_export(args.run_dir, fmt=fmt, keep_lora=args.keep_lora)
    out = EXPORTERS[fmt or default_format(model)](model, tokenizer, args.out_dir)
    print(f"exported to {out}")
    return 0


def _hint_adapt(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mmtune.models.hint.adapt import check_writable, instruction_of, open_hint_run, read_examples, write_adapter

    examples = read_examples(Path(args.examples)) if args.examples else ()
    check_writable(args.run_dir)
    run = open_hint_run(args.run_dir)
    base = write_adapter(run, instruction_of(args.instruction, examples), Path(args.out))
    kind = "prefix-tuning" if run.hypernetwork.cfg.prefix_tokens else "LoRA"
    print(f"wrote a peft {kind} adapter for the instruction to {args.out} (base model: {base})")
    return 0


def _edit(args: argparse.Namespace) -> int:
    from mmtune.generation import edit

    options = edit.EditOptions(**given(args, "text_guidance", "image_guidance", "steps", "seed", "resolution",
                                       "device"))
    out = edit.check_output_path(args.out)
    edited = edit.edit_image(args.model, args.image, args.instruction, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    edited.save(out)
    print(f"edited {args.image} -> {out} ({edited.width}x{edited.height}, {edit.describe(options)})")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from mmtune.datagen.synth import generate_synth
    from mmtune.datagen.synth.common import MEDIA_KINDS

    options = given(args, "train", "heldout", "seed", "questions_per_item", "question_types", "blank", "blank_only",
                    "overwrite", "image_size", "grid", "objects", "colors", "shapes", "frame_size", "frames", "fps",
                    "duration")
    summary = generate_synth(args.task, args.out_dir, **options)
    held, train = summary["splits"]["heldout"], summary["splits"]["train"]
    chance = ", ".join(f"{t} {c:.2f}" for t, c in summary["chance"].items())
    print(f"{args.task}: {train['items']} train / {held['items']} held-out {MEDIA_KINDS[summary['modality']].noun} "
          f"({train['rows']} / {held['rows']} questions) in {args.out_dir}")
    print(f"  held-out chance (majority answer): {chance}; question-only baseline "
          f"{summary['question_only']['overall']:.2f}")
    if "blank" in options:
        print(f"  media-blanked control: {options['blank']}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Flags left out keep the defaults of the options dataclasses (their one home)."""
    from pathlib import Path

    from mmtune import datagen
    from mmtune.errors import ConfigError

    if args.method == "edits":
        return _generate_edits(args)
    if not hasattr(args, "out_dir"):
        raise ConfigError(f"data generate {args.method}: give the output folder (OUT_DIR)")
    sampler = datagen.load_sampler(getattr(args, "model", DEFAULT_MODEL), **given(args, "temperature", "top_p"))
    common = given(args, "batch_size", "seed", "max_new_tokens")
    outputs = given(args, "output_max_new_tokens").get("output_max_new_tokens")
    if args.method == "self-instruct":
        own = given(args, "count", "max_batches")
        if hasattr(args, "seeds"):
            own["seeds"] = Path(args.seeds)
        if outputs is not None:
            own["instance_max_new_tokens"] = outputs
        report = datagen.self_instruct(Path(args.out_dir), sampler, datagen.SelfInstructOptions(**common, **own))
    else:
        own = given(args, "input_format", "rounds", "limit")
        if hasattr(args, "input"):
            own["input"] = Path(args.input)
        if outputs is not None:
            own["response_max_new_tokens"] = outputs
        report = datagen.evol_instruct(Path(args.out_dir), sampler, datagen.EvolInstructOptions(**common, **own))
    print(report.format())
    return 0


def _generate_edits(args: argparse.Namespace) -> int:
    """``data generate edits``: flags left out keep ``EditGenOptions``'s defaults."""
    from mmtune.datagen.edits import EditGenOptions, generate_edits
    from mmtune.errors import ConfigError

    missing = [flag for flag, dest in (("--captions", "captions"), ("--out", "out_dir")) if not hasattr(args, dest)]
    if missing:
        raise ConfigError(f"data generate edits: {' and '.join(missing)} required")
    options = given(args, "batch_size", "max_new_tokens", "temperature", "top_p", "seed", "limit", "sd", "scheduler",
                    "steps", "resolution", "samples", "keep", "share", "clip", "min_caption_sim",
                    "min_direction_sim", "min_image_sim", "device", "dtype")
    options.update({k: tuple(v) for k, v in given(args, "p2p_range", "guidance_range").items()})
    if hasattr(args, "model"):
        options["llm"] = args.model
    if hasattr(args, "clip_pretrained"):
        options["clip_pretrained"] = None if args.clip_pretrained.lower() in ("", "none") else args.clip_pretrained
    report = generate_edits(args.captions, args.out_dir, EditGenOptions(**options))
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
