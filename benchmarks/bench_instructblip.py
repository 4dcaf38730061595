#!/usr/bin/env python
"""Benchmark: mmtune's InstructBLIP-style training vs ``InstructBlipForConditionalGeneration`` + ``Trainer``, on CPU.

The same tiny InstructBLIP on both sides: a random ``InstructBlipVisionModel``
(96 px, patch 16, 2 layers of width 128, saved once and loaded by both; its
``last_hidden_state``: CLS + 36 patches, after ``post_layernorm``), an
instruction-aware Q-Former (2 layers of width 128, cross-attention every 2nd
layer, 32 query tokens, mmtune's ``basic`` BERT vocabulary for the
instruction; one seeded initialisation saved once and loaded by both), the
language projection, and a causal LM (the tests' tiny random Llama with
SmolLM2's tokenizer, or SmolLM2-135M-Instruct). InstructBLIP's split: vision
encoder and LLM frozen, Q-Former + query tokens + projection trained; same lr
/ optimizer / seed, fp32, the same fixed number of torch threads.

Data: VQA-style rows generated over the shipped photos
(``datasets/mmtune-vision/images``): the question of each image sample of
``datasets/mmtune-vision/train.json`` with a short answer (the first clause of
its answer, 1-10 words), phrased with one of InstructBLIP's VQA templates
(``datasets/templates/instructblip_vqa.yaml``, drawn per row, seed 42).
Exactly ``steps x batch`` rows, so both sides train on the same samples for
the same number of optimizer steps (one epoch).

* **mmtune**: ``mmtune.train(recipe)``: ``hf`` encoder on the saved tower
  (``select_layer: -1``, ``cls_patch``), ``qformer`` connector, the
  ``instructblip`` template, method ``frozen`` for the LLM; packed rows (their
  length chosen so that the epoch is exactly ``steps`` steps of
  ``--micro-batch-size`` rows), DataLoader workers decode the images and
  tokenize the instruction for the Q-Former.
* **baseline**: ``InstructBlipForConditionalGeneration`` (the same weights
  loaded into it), ``Trainer`` on padded batches of ``batch`` samples built by
  ``InstructBlipProcessor`` in the DataLoader workers (32 image tokens
  prepended to the prompt, the prompt also tokenized for the Q-Former, the
  answer + EOS appended; labels -100 on image, prompt and padding positions).

Each side runs in its own subprocess, so its peak RSS is its own. Printed:
trained tokens/s of both and their ratio (target >= 1.5x), mmtune's data-wait
share of step time (target < 5%), peak RSS, and the loss of both at the end.
A script that prints figures, not a test::

    python benchmarks/bench_instructblip.py                 # tiny LLM, 300 steps of 8 samples
    python benchmarks/bench_instructblip.py --steps 5       # a quick end-to-end check
    python benchmarks/bench_instructblip.py --llm smollm2 --steps 12 --out instructblip.json

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(REPO), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np
import torch

from common import (
    add_side_args, finish, length_stats, llm_dir, loadavg, media_data_section, mmtune_fed_padding, mmtune_side,
    peak_rss_mib, run_sides, side_main, tokenizer_and_media, train_section, trained_targets, train_with_stats,
    trainer_figures, training_arguments, with_stats,
)
from report import (
    print_side_process_targets, print_table, side_process_rows, side_process_target_flags, timing_rows, tok_s_ratio,
)

VISION_JSON = REPO / "datasets" / "mmtune-vision" / "train.json"
VISION_IMAGES = REPO / "datasets" / "mmtune-vision" / "images"
VQA_TEMPLATES = REPO / "datasets" / "templates" / "instructblip_vqa.yaml"

LR = 5.0e-4
SEED = 42
# A tiny InstructBLIP vision tower: 96 px / patch 16 = 36 patches + CLS = 37 features.
VISION = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 96, "patch_size": 16}
# A tiny Q-Former (mmtune's `qformer` options over BERT-base; the same InstructBlipQFormerConfig on both sides).
QFORMER = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512,
           "cross_attention_frequency": 2}
NUM_QUERY_TOKENS = 32
QFORMER_TOKENIZER = "basic"
MAX_ANSWER_WORDS = 10


# --------------------------------------------------------------------------- data


def vqa_pool() -> list[tuple[str, str, str]]:
    """(image, question, short answer) for every image sample of the shipped set: its first question, and the
    first clause of the first sentence of its answer (at most MAX_ANSWER_WORDS words, no final punctuation)."""
    pool = []
    for row in json.loads(VISION_JSON.read_text(encoding="utf-8")):
        if "image" not in row:
            continue
        question = " ".join(row["conversations"][0]["value"].replace("<image>", " ").split())
        answer = re.split(r"(?<=[.!?])\s", row["conversations"][1]["value"].strip())[0]
        answer = re.split(r"[,;:]\s", answer)[0]
        answer = " ".join(answer.split()[:MAX_ANSWER_WORDS]).rstrip(".!?")
        pool.append((row["image"], question, answer))
    return pool


def write_vqa_rows(path: Path, n: int) -> list[dict]:
    """``n`` LLaVA-format rows: the pool shuffled again for each pass, one InstructBLIP VQA template per row.

    The user turn is ``<image>`` + the filled template (InstructBLIP puts the image first); returns the rows
    with their prompt and answer, which the baseline's processor reads."""
    import yaml

    templates = yaml.safe_load(VQA_TEMPLATES.read_text(encoding="utf-8"))["templates"]
    pool = vqa_pool()
    rng = np.random.default_rng(SEED)
    rows, meta = [], []
    while len(rows) < n:
        for j in rng.permutation(len(pool)):
            if len(rows) == n:
                break
            image, question, answer = pool[j]
            prompt = templates[int(rng.integers(len(templates)))].replace("{question}", question).strip()
            rows.append({"id": f"vqa-{len(rows):05d}", "image": image,
                         "conversations": [{"from": "human", "value": "<image>" + prompt},
                                           {"from": "gpt", "value": answer}]})
            meta.append({"image": str(VISION_IMAGES / image), "prompt": prompt, "answer": answer})
    path.write_text(json.dumps(rows), encoding="utf-8")
    return meta


# --------------------------------------------------------------------------- shared setup (parent)


def build_vision_tower(out: Path) -> Path:
    from transformers import InstructBlipVisionConfig, InstructBlipVisionModel

    torch.manual_seed(SEED)
    InstructBlipVisionModel(InstructBlipVisionConfig(**VISION)).save_pretrained(out)
    return out


def build_qformer_init(out: Path, llm_hidden: int) -> Path:
    """One seeded Q-Former connector (qformer.*, query_tokens, language_projection.*), loaded by both sides."""
    from safetensors.torch import save_file

    from mmtune.models.multimodal.connectors import QFormerConnector

    torch.manual_seed(SEED)
    connector = QFormerConnector(VISION["hidden_size"], llm_hidden, num_query_tokens=NUM_QUERY_TOKENS,
                                 instruction_aware=True, tokenizer=QFORMER_TOKENIZER, qformer=dict(QFORMER))
    save_file({k: v.contiguous() for k, v in connector.state_dict().items()}, str(out))
    return out


def mmtune_recipe(plan: dict) -> dict:
    return {
        "output_dir": plan["mmtune_run"],
        "model": {
            "name": plan["llm_dir"], "dtype": "float32", "attn_implementation": "sdpa",
            "media": {"image": {
                "encoder": {"kind": "hf", "name": plan["vision_dir"], "select_layer": -1,
                            "select_feature": "cls_patch"},
                "connector": {"kind": "qformer", "weights": plan["qformer_init"],
                              "options": {"num_query_tokens": NUM_QUERY_TOKENS, "instruction_aware": True,
                                          "tokenizer": QFORMER_TOKENIZER, "qformer": dict(QFORMER)}},
                "image_preprocess": "resize",
            }},
        },
        "data": media_data_section(plan, "instructblip", VISION_IMAGES),
        "method": {"name": "frozen",
                   "media": {"image": {"encoder": {"trainable": "frozen"}, "connector": {"trainable": "full"}}}},
        "train": train_section(micro_batch_size=plan["micro_batch_size"], lr=LR, seed=SEED),
    }


def row_length_for(lengths: np.ndarray, steps: int, micro_batch_size: int) -> tuple[int, int]:
    """The shortest packed-row length (at least the longest sample) whose first-fit-decreasing packing gives
    exactly ``steps`` steps of ``micro_batch_size`` rows, or else the nearest count; and the steps it gives."""
    from mmtune.data.packing import make_rows

    def steps_at(length: int) -> int:
        return math.ceil(len(make_rows(lengths, length, True)) / micro_batch_size)

    lo, hi = int(lengths.max()), max(int(lengths.max()), int(lengths.sum()))
    if steps_at(lo) > steps:  # binary search for the first length with at most `steps` steps
        while hi - lo > 1:  # steps_at(lo) > steps >= steps_at(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if steps_at(mid) > steps else (lo, mid)
        lo = hi
    # Packing is not monotone in the length: look just around the transition for an exact count.
    window = range(max(int(lengths.max()), lo - 32), lo + 33)
    return min(((length, steps_at(length)) for length in window), key=lambda c: (abs(c[1] - steps), c[0]))


def hf_encode(processor, prompt: str, answer: str, image) -> dict:
    """One training sample as InstructBLIP is fine-tuned with transformers: the processor on the prompt (query
    image tokens prepended; the prompt also tokenized for the Q-Former), then answer + EOS appended; labels
    -100 on image and prompt positions."""
    enc = processor(images=image, text=prompt, return_tensors="pt")
    tok = processor.tokenizer
    answer_ids = tok(answer + tok.eos_token, add_special_tokens=False)["input_ids"]
    prompt_ids = enc["input_ids"][0].tolist()
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids,
            "qformer_input_ids": enc["qformer_input_ids"][0].tolist(),
            "pixel_values": enc["pixel_values"][0]}


def build_processor(plan: dict):
    """InstructBlipProcessor: BLIP's image processor at the tower's size (bicubic resize, CLIP mean/std), the
    LLM's tokenizer (the processor adds its ``<image>`` token), mmtune's ``basic`` Q-Former tokenizer."""
    from transformers import AutoTokenizer, BlipImageProcessor, InstructBlipProcessor

    from mmtune.models.multimodal.encoders import CLIP_MEAN, CLIP_STD
    from mmtune.models.multimodal.qformer_tokenizer import load_qformer_tokenizer

    image_processor = BlipImageProcessor(size={"height": VISION["image_size"], "width": VISION["image_size"]},
                                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    tokenizer = AutoTokenizer.from_pretrained(plan["llm_dir"])
    tokenizer.padding_side = "right"
    return InstructBlipProcessor(image_processor, tokenizer, load_qformer_tokenizer(QFORMER_TOKENIZER),
                                 num_query_tokens=NUM_QUERY_TOKENS)


def check_same_samples(view, meta: list[dict], processor) -> dict:
    """Compare the baseline's processor output (on a blank image) with mmtune's tokenization, as multisets:
    the same ids (image positions aside) and the same trained positions for every sample."""
    from PIL import Image

    from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID

    blank = Image.new("RGB", (VISION["image_size"],) * 2)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
    hf, mm = [], []
    for m in meta:
        f = hf_encode(processor, m["prompt"], m["answer"], blank)
        ids = np.asarray(f["input_ids"])
        hf.append((tuple(np.where(ids == image_id, -1, ids).tolist()),
                   tuple((np.asarray(f["labels"]) != -100).tolist())))
    for k in range(len(view)):
        ids, trained = view[k]
        ids = np.asarray(ids, dtype=np.int64)
        mm.append((tuple(np.where(ids == IMAGE_PLACEHOLDER_ID, -1, ids).tolist()),
                   tuple(np.asarray(trained, dtype=bool).tolist())))
    same = sorted(hf) == sorted(mm)
    return {"same_samples": same, "baseline_targets": int(sum(sum(t) for _, t in hf)),
            "baseline_tokens": int(sum(len(i) for i, _ in hf)), "image_token_id": int(image_id)}


def prepare(work: Path, *, llm: str, steps: int, batch: int, micro_batch_size: int, workers: int,
            threads: int) -> dict:
    """Build models and data once; tokenize with mmtune (filling the cache its run reads); write the plan."""
    from transformers import AutoConfig

    from mmtune import validate_recipe
    from mmtune.data.packing import make_rows, packing_utilisation
    from mmtune.data.pipeline import build_conversation_data

    llm_path = llm_dir(llm, work)
    vision_dir = build_vision_tower(work / "vision-tower")
    llm_hidden = AutoConfig.from_pretrained(llm_path).hidden_size
    qformer_init = build_qformer_init(work / "qformer-init.safetensors", llm_hidden)
    data_path = work / "vqa.json"
    n = steps * batch
    meta = write_vqa_rows(data_path, n)
    (work / "hf-samples.json").write_text(json.dumps(meta))
    plan = {
        "llm": llm, "llm_dir": str(llm_path), "vision_dir": str(vision_dir), "qformer_init": str(qformer_init),
        "data_path": str(data_path), "cache_dir": str(work / "cache"), "mmtune_run": str(work / "run-mmtune"),
        "hf_run": str(work / "run-hf"), "max_length": 4096, "micro_batch_size": micro_batch_size,
        "workers": workers, "threads": threads, "steps": steps, "batch": batch,
    }
    for run in (plan["mmtune_run"], plan["hf_run"]):  # a kept work directory: mmtune appends to metrics.jsonl
        shutil.rmtree(run, ignore_errors=True)
    rc = validate_recipe(mmtune_recipe(plan), source="benchmark recipe")
    tokenizer, specs, image_tokens = tokenizer_and_media(rc, llm_path)
    lengths = build_conversation_data(tokenizer, rc.data, seed=SEED, media=specs).train.lengths()
    # Rows as short as still give `steps` steps: the epoch is the baseline's `steps` batches of `batch` samples.
    plan["max_length"], mm_steps = row_length_for(lengths, steps, micro_batch_size)
    rc = validate_recipe(mmtune_recipe(plan), source="benchmark recipe")
    data = build_conversation_data(tokenizer, rc.data, seed=SEED, media=specs)  # the cache entry the run reads
    view = data.train
    lengths = view.lengths()
    targets = trained_targets(view)
    rows = make_rows(lengths, plan["max_length"], True)
    processor = build_processor(plan)
    check = check_same_samples(view, meta, processor)
    plan.update({
        "samples": len(view), "image_tokens": image_tokens, "truncated": sum(r.truncated for r in data.reports),
        "lengths": length_stats(lengths),
        "answer_tokens": {"min": int(targets.min()), "mean": float(targets.mean()), "max": int(targets.max())},
        "targets_in_data": int(targets.sum()), "rows": len(rows), "mm_steps": mm_steps,
        "utilisation": packing_utilisation(rows, lengths, plan["max_length"]),
        "mm_pad_fraction_fed": mmtune_fed_padding(lengths, plan["max_length"], micro_batch_size, SEED)["pad_fraction_fed"],
        "baseline_steps": math.ceil(len(meta) / batch), **check,
    })
    return plan


# --------------------------------------------------------------------------- losses (in each side's process)


def losses(values: list[float]) -> dict:
    """First and last step's loss, and the mean of the last 5 (per-step losses of small batches are noisy)."""
    if not values:
        return {"first": float("nan"), "last": float("nan"), "last5": float("nan")}
    return {"first": values[0], "last": values[-1], "last5": float(np.mean(values[-5:]))}


# --------------------------------------------------------------------------- mmtune side (subprocess)


def run_mmtune(plan: dict) -> dict:
    out, records = mmtune_side(mmtune_recipe(plan))
    out["loss"] = losses([r["loss"] for r in records])
    out["torch_threads"] = torch.get_num_threads()
    return out


# --------------------------------------------------------------------------- baseline side (subprocess)


class VqaSamples(torch.utils.data.Dataset):
    """The generated rows; each sample read and run through InstructBlipProcessor on access (in a worker)."""

    def __init__(self, samples: list[dict], processor) -> None:
        self.samples = samples
        self.processor = processor

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        s = self.samples[i]
        with Image.open(s["image"]) as im:
            image = im.convert("RGB")
        return hf_encode(self.processor, s["prompt"], s["answer"], image)


class InstructBlipCollator:
    """Pad LLM ids / mask / labels and the Q-Former's ids / mask to the batch's longest; stack the images."""

    def __init__(self, processor) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.text = DataCollatorForSeq2Seq(processor.tokenizer, padding=True, label_pad_token_id=-100)
        self.qformer_tokenizer = processor.qformer_tokenizer

    def __call__(self, features):
        batch = self.text([{"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]),
                            "labels": f["labels"]} for f in features])
        q = self.qformer_tokenizer.pad({"input_ids": [f["qformer_input_ids"] for f in features]}, padding=True,
                                       return_tensors="pt")
        batch["qformer_input_ids"], batch["qformer_attention_mask"] = q["input_ids"], q["attention_mask"]
        batch["pixel_values"] = torch.stack([torch.as_tensor(f["pixel_values"]) for f in features])
        return with_stats(batch, len(features))


def build_hf_instructblip(plan: dict, processor):
    """InstructBlipForConditionalGeneration with the saved tower, Q-Former init and LLM weights; the LLM's
    embeddings grown by the processor's ``<image>`` token, as for the published checkpoints."""
    from safetensors.torch import load_file
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipQFormerConfig,
        InstructBlipVisionModel,
    )

    from mmtune.models.multimodal.connectors import QFORMER_BERT_BASE

    text_cfg = AutoConfig.from_pretrained(plan["llm_dir"])
    vision = InstructBlipVisionModel.from_pretrained(plan["vision_dir"], dtype=torch.float32)
    qcfg = InstructBlipQFormerConfig(**{**QFORMER_BERT_BASE, **QFORMER}, encoder_hidden_size=VISION["hidden_size"],
                                     vocab_size=len(processor.qformer_tokenizer))
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token.content)
    cfg = InstructBlipConfig(vision_config=vision.config.to_dict(), qformer_config=qcfg.to_dict(),
                             text_config=text_cfg.to_dict(), num_query_tokens=NUM_QUERY_TOKENS,
                             image_token_index=image_id)
    model = InstructBlipForConditionalGeneration._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(plan["llm_dir"], dtype=torch.float32)
    model.language_model.load_state_dict(llm.state_dict())
    model.vision_model.load_state_dict(vision.state_dict())
    del llm, vision
    init = load_file(plan["qformer_init"])
    missing, unexpected = model.load_state_dict(init, strict=False)
    if unexpected or any(k.startswith(("qformer.", "query_tokens", "language_projection.")) for k in missing):
        raise SystemExit(f"the Q-Former init does not fit InstructBLIP: missing {missing[:3]} unexpected {unexpected[:3]}")
    model.language_model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    model.config.text_config.vocab_size = model.language_model.config.vocab_size
    return model


def run_hf(plan: dict) -> dict:
    from transformers import set_seed

    t0 = time.perf_counter()
    set_seed(SEED)
    processor = build_processor(plan)
    model = build_hf_instructblip(plan, processor)
    model.config.use_cache = False
    # InstructBLIP's split: the vision encoder and the LLM frozen; Q-Former, query tokens, projection trained.
    model.requires_grad_(False)
    for part in (model.qformer, model.language_projection):
        part.requires_grad_(True)
    model.query_tokens.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    samples = json.loads((Path(plan["hf_run"]).parent / "hf-samples.json").read_text())
    dataset = VqaSamples(samples, processor)
    args = training_arguments(plan["hf_run"], batch_size=plan["batch"], workers=plan["workers"], lr=LR, seed=SEED,
                              logging_steps=1)
    trainer, timer, _ = train_with_stats(model, args, dataset, InstructBlipCollator(processor))
    wall = time.perf_counter() - t0
    out = trainer_figures(timer, trainer.stats, plan["batch"])
    step_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    out.update({
        "loss": losses(step_losses), "final_loss": step_losses[-1] if step_losses else float("nan"),
        "wall_s_phase": wall, "params": {"trainable": trainable, "total": total},
        "torch_threads": torch.get_num_threads(),
    })
    del trainer, model
    out["rss"] = peak_rss_mib()
    return out


# --------------------------------------------------------------------------- orchestration


def print_report(plan: dict, mm: dict, bl: dict) -> dict:
    ratio = tok_s_ratio(mm, bl)

    def loss(side: dict) -> str:
        l = side["loss"]
        return f"{l['first']:.4f} -> {l['last']:.4f} (last 5: {l['last5']:.4f})"

    rows = [
        ("", "mmtune (packed)", "HF InstructBLIP + Trainer (padded)"),
        ("samples per optimizer step",
         f"{plan['samples'] / max(mm['steps'], 1):.2f} ({plan['micro_batch_size']} rows of {plan['max_length']})",
         f"{bl['batch_size']}"),
        *timing_rows(mm, bl),
        *side_process_rows(plan, mm, bl),
        ("torch threads", f"{mm['torch_threads']}", f"{bl['torch_threads']}"),
        ("loss step 1 -> last", loss(mm), loss(bl)),
    ]
    print(f"\n--- results: llm {plan['llm']} ({plan['samples']} samples, {plan['steps']} steps of {plan['batch']}) ---")
    print_table(rows)
    same = print_side_process_targets(mm, bl, ratio)
    print(f"RESULT llm={plan['llm']} steps={plan['steps']} mmtune_tok_s={mm['tok_s']:.1f} "
          f"baseline_tok_s={bl['tok_s']:.1f} ratio={ratio:.2f}x mmtune_data_wait={mm['data_wait']:.4f} "
          f"mmtune_peak_rss_mib={mm['rss']['main_mib']:.0f} baseline_peak_rss_mib={bl['rss']['main_mib']:.0f} "
          f"mmtune_loss={mm['loss']['last']:.4f} baseline_loss={bl['loss']['last']:.4f} "
          f"{side_process_target_flags(mm, ratio)}")
    return {"ratio": ratio, "same_targets": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps on each side, one epoch (default 300)")
    p.add_argument("--batch", type=int, default=8,
                   help="samples per optimizer step: the baseline's batch; mmtune packs the same samples (default 8)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="mmtune's packed rows per optimizer step (default 2)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides (default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on both sides (default: the CPUs the DataLoader workers leave, 1 to 4)")
    add_side_args(p)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be at least 2 (step 1 is warm-up and not timed)")
    if args.threads is None:  # threads + busy workers beyond the cores stall every small kernel (see README)
        args.threads = max(1, min(4, (os.cpu_count() or 1) - args.workers))
    torch.set_num_threads(args.threads)

    if args.side:  # a child process: one side, figures to result-SIDE.json
        return side_main(args.side, args.work, {"mmtune": run_mmtune, "hf": run_hf})

    t_start = time.perf_counter()
    print(f"mmtune InstructBLIP benchmark: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {args.threads} (both sides), "
          f"CUDA {'on' if torch.cuda.is_available() else 'off (not used)'}")
    print(f"load average at start (1/5/15 min): {loadavg()}  (other busy processes skew the figures)")
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-instructblip-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        plan = prepare(work, llm=args.llm, steps=args.steps, batch=args.batch, micro_batch_size=args.micro_batch_size,
                       workers=args.workers, threads=args.threads)
        (work / "plan.json").write_text(json.dumps(plan))
        print(f"setup (models, data, tokenization; not timed): {time.perf_counter() - t0:.1f}s")
        lens, ans = plan["lengths"], plan["answer_tokens"]
        print(f"data: {plan['samples']} VQA rows over datasets/mmtune-vision/images (InstructBLIP VQA templates, "
              f"short answers), {plan['truncated']} truncated; {plan['image_tokens']} query tokens per image")
        print(f"sample length (tokens, image expanded): min {lens['min']}  mean {lens['mean']:.1f}  "
              f"p50 {lens['p50']:.0f}  p95 {lens['p95']:.0f}  max {lens['max']}  total {lens['total']:,}; "
              f"trained targets {plan['targets_in_data']:,} (answer + EOS: {ans['min']}-{ans['max']}, "
              f"mean {ans['mean']:.1f} per sample)")
        print(f"model: InstructBLIP vision {VISION['num_hidden_layers']}x{VISION['hidden_size']} at "
              f"{VISION['image_size']}px (frozen) + Q-Former {QFORMER['num_hidden_layers']}x{QFORMER['hidden_size']}, "
              f"{NUM_QUERY_TOKENS} queries, instruction-aware ('{QFORMER_TOKENIZER}' BERT vocabulary; trained, same "
              f"init both sides) + {plan['llm_dir']} (frozen)")
        if plan["same_samples"]:
            print("baseline check: InstructBlipProcessor gives the same ids and trained positions as mmtune's "
                  "tokenization for every sample (image positions aside)")
        else:
            print(f"WARNING: InstructBlipProcessor's samples differ from mmtune's tokenization (baseline: "
                  f"{plan['baseline_tokens']:,} tokens, {plan['baseline_targets']:,} targets)")
        print(f"mmtune: {plan['rows']} packed rows of {plan['max_length']} (utilisation {plan['utilisation']:.1%}), "
              f"{plan['micro_batch_size']} rows/step -> {plan['mm_steps']} steps; baseline: batch "
              f"{plan['batch']} samples -> {plan['baseline_steps']} steps; {plan['workers']} DataLoader "
              f"workers each; lr {LR} constant, fused AdamW, fp32, seed {SEED}", flush=True)
        if plan["mm_steps"] != plan["baseline_steps"]:
            print(f"WARNING: no packed-row length gives exactly {plan['steps']} mmtune steps; it runs "
                  f"{plan['mm_steps']}")
        # Both sides with the same torch threads (and as many OpenMP / MKL threads).
        mm, bl = run_sides(__file__, work, "HF InstructBlipForConditionalGeneration", "--threads", str(args.threads),
                           env={"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    verdict = print_report(plan, mm, bl)
    return finish(t_start, args.out, plan=plan, mmtune=mm, baseline=bl, **verdict)


if __name__ == "__main__":
    raise SystemExit(main())
