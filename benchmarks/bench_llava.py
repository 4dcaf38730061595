#!/usr/bin/env python
"""Benchmark: mmtune's LLaVA-style training vs ``LlavaForConditionalGeneration`` + ``transformers.Trainer``, on CPU.

The same tiny vision-language model on both sides: a random CLIP vision tower
(a tiny ``CLIPVisionConfig``: 96 px, patch 16, 2 layers of width 128, saved
once and loaded by both), LLaVA's 2-layer GELU projector, and a causal LM (the
tests' tiny random Llama with SmolLM2's tokenizer, or SmolLM2-135M-Instruct).
Encoder frozen, projector fully trained, LLM through LoRA (rank 16, all-linear
of the LLM), same lr / optimizer / seed, fp32. Data: the shipped
``datasets/mmtune-vision`` set (LLaVA JSON, 29 photos, 70 conversations),
repeated to get enough steps, tokenized once by mmtune; both sides train on
exactly those token ids and the same trained targets.

* **mmtune**: ``mmtune.train(recipe)`` with the ``hf`` encoder kind on the
  saved CLIP tower, packing, 2 DataLoader workers (``data.num_workers``).
* **baseline**: ``LlavaForConditionalGeneration`` (the same CLIP tower and LLM
  weights loaded into it), ``Trainer`` with padded batches, LlavaProcessor-style
  input (the image token repeated once per patch, labels -100 on prompt and
  image positions), images decoded by the same number of DataLoader workers.

Each side runs in its own subprocess, so its peak RSS is its own. Printed:
trained tokens/s of both and their ratio (target >= 1.5x), the share of step
time spent waiting for data (mmtune's ``data_wait`` from ``metrics.jsonl``;
target < 5% with 2 workers), peak RSS. A script that prints figures, not a test::

    python benchmarks/bench_llava.py                     # tiny LLM, the set repeated 4x
    python benchmarks/bench_llava.py --llm smollm2 --repeat 1 --out llava.json

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Shared with the text benchmark: metrics.jsonl reading, load average, percentiles.
from bench_text_sft import _loadavg, mmtune_fed_padding, mmtune_throughput, pct, spread  # noqa: E402
from report import print_table, timing_rows  # noqa: E402

VISION_JSON = REPO / "datasets" / "mmtune-vision" / "train.json"
VISION_IMAGES = REPO / "datasets" / "mmtune-vision" / "images"

LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LR = 5.0e-4
SEED = 42
# A tiny CLIP vision tower: 96 px / patch 16 = 36 patch tokens (+ CLS, dropped as LLaVA does).
CLIP_VISION = {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 96, "patch_size": 16, "projection_dim": 64}
SELECT_LAYER = -2
LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- shared setup (parent)


def write_repeated_llava(path: Path, repeat: int) -> int:
    """The shipped LLaVA JSON ``repeat`` times (ids made unique); images stay in the shipped folder."""
    rows = json.loads(VISION_JSON.read_text(encoding="utf-8"))
    out = [{**row, "id": f"{row['id']}-r{r}"} for r in range(repeat) for row in rows]
    path.write_text(json.dumps(out), encoding="utf-8")
    return len(out)


def build_clip_tower(out: Path) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(SEED)
    CLIPVisionModel(CLIPVisionConfig(**CLIP_VISION)).save_pretrained(out)
    return out


def mmtune_recipe(plan: dict) -> dict:
    return {
        "output_dir": plan["mmtune_run"],
        "model": {
            "name": plan["llm_name"], "dtype": "float32", "attn_implementation": "sdpa",
            "media": {"image": {
                "encoder": {"kind": "hf", "name": plan["clip_dir"], "select_layer": SELECT_LAYER,
                            "select_feature": "patch"},
                "connector": {"kind": "mlp2x_gelu"},
                "image_preprocess": "pad",
            }},
        },
        "data": {
            "datasets": [{"path": plan["data_path"], "format": "llava", "media_folder": str(VISION_IMAGES)}],
            "template": "auto",
            "max_length": plan["max_length"],
            "packing": True,
            "val_fraction": 0.0,
            "cache_dir": plan["cache_dir"],
            "shuffle": True,
            "num_workers": plan["workers"],
        },
        "method": {"name": "lora", "lora": dict(LORA),
                   "media": {"image": {"encoder": {"trainable": "frozen"}, "connector": {"trainable": "full"}}}},
        "train": {
            "seed": SEED, "epochs": 1, "micro_batch_size": plan["micro_batch_size"], "grad_accum_steps": 1,
            "lr": LR, "weight_decay": 0.0, "scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
            "mixed_precision": "no", "log_every": 1, "eval_every": None, "save_every": None,
            "tensorboard": False, "progress": False,
        },
    }


def unused_special_id(tokenizer, view) -> int:
    """A special token id that occurs in no sample: the baseline's image token, so no embedding resize."""
    used = set()
    for k in range(len(view)):
        used.update(np.unique(np.asarray(view[k][0])).tolist())
    reserved = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    for tid in sorted(tokenizer.added_tokens_decoder, reverse=True):
        if tid not in used and tid not in reserved:
            return int(tid)
    raise SystemExit("no unused special token for the baseline's image token")


def baseline_features(view, image_token_id: int) -> list[dict]:
    """mmtune's ids with each image position set to the image token; labels = id where trained, else -100."""
    from mmtune.modalities.image import IMAGE_PLACEHOLDER_ID

    feats = []
    for k in range(len(view)):
        ids, trained = view[k]
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.where(np.asarray(trained, dtype=bool), ids, -100)
        is_image = ids == IMAGE_PLACEHOLDER_ID
        assert (labels[is_image] == -100).all(), "an image position is trained"
        ids = np.where(is_image, image_token_id, ids)
        feats.append({"input_ids": ids.tolist(), "labels": labels.tolist(),
                      "images": [item.path for item in view.media(k)]})
    return feats


def prepare(work: Path, *, llm: str, repeat: int, max_length: int, micro_batch_size: int, workers: int) -> dict:
    """Build models and data once; tokenize with mmtune (filling the cache its run reads); write the plan."""
    from mmtune import validate_recipe
    from mmtune.config.schema import ModelConfig
    from mmtune.data.packing import make_rows, packing_utilisation
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.data.templates import install_template
    from mmtune.models.aliases import resolve_alias
    from mmtune.models.loading import load_tokenizer
    from mmtune.models.tiny import build_tiny_llama
    from mmtune.models.open import open_multimodal

    smol_dir = resolve_alias("smollm2-135m-instruct")
    if llm == "tiny":
        llm_dir = build_tiny_llama(work / "tiny-llama", load_tokenizer(ModelConfig(name=str(smol_dir))),
                                   max_positions=max(1024, max_length))
    else:
        llm_dir = smol_dir
    clip_dir = build_clip_tower(work / "clip-tower")
    data_path = work / "llava-repeated.json"
    written = write_repeated_llava(data_path, repeat)
    plan = {
        "llm": llm, "llm_name": str(llm_dir), "llm_dir": str(llm_dir), "clip_dir": str(clip_dir),
        "data_path": str(data_path), "cache_dir": str(work / "cache"), "mmtune_run": str(work / "run-mmtune"),
        "hf_run": str(work / "run-hf"), "max_length": max_length, "micro_batch_size": micro_batch_size,
        "workers": workers, "repeat": repeat, "written": written,
    }
    rc = validate_recipe(mmtune_recipe(plan), source="benchmark recipe")
    tokenizer = load_tokenizer(rc.model)
    install_template(tokenizer, rc.data.template)
    # Image tokens per image, from the model mmtune builds (encoder patches -> connector outputs).
    from transformers import AutoModelForCausalLM

    probe = open_multimodal(rc.model.branches(), AutoModelForCausalLM.from_pretrained(str(llm_dir), dtype=torch.float32))
    specs = probe.media_specs(tokenizer)
    image_tokens = probe.branches["image"].num_tokens
    del probe
    data = build_conversation_data(tokenizer, rc.data, seed=rc.train.seed, media=specs)
    view = data.train
    lengths = view.lengths()
    targets = np.array([int(np.asarray(view[k][1])[1:].sum()) for k in range(len(view))])
    images = sum(len(view.media(k)) for k in range(len(view)))
    rows = make_rows(lengths, max_length, True)
    mm_steps = math.ceil(len(rows) / micro_batch_size)
    baseline_bs = max(1, round(len(view) / mm_steps))
    image_token_id = unused_special_id(tokenizer, view)
    features = baseline_features(view, image_token_id)
    (work / "hf-features.json").write_text(json.dumps(features))
    tokenizer.save_pretrained(work / "tokenizer")
    plan.update({
        "samples": len(view), "images": images, "image_tokens": image_tokens, "image_token_id": image_token_id,
        "image_token": tokenizer.convert_ids_to_tokens(image_token_id),
        "truncated": sum(r.truncated for r in data.reports),
        "lengths": {"min": int(lengths.min()), "mean": float(lengths.mean()), "p50": pct(lengths, 50),
                    "p95": pct(lengths, 95), "max": int(lengths.max()), "total": int(lengths.sum())},
        "targets_in_data": int(targets.sum()), "rows": len(rows), "mm_steps": mm_steps,
        "utilisation": packing_utilisation(rows, lengths, max_length), "baseline_bs": baseline_bs,
        "mm_pad_fraction_fed": mmtune_fed_padding(lengths, max_length, micro_batch_size)["pad_fraction_fed"],
        "baseline_steps": math.ceil(len(view) / baseline_bs),
    })
    return plan


# --------------------------------------------------------------------------- memory (in each side's process)


def peak_rss_mib() -> dict:
    """Kernel high-water marks: this process, and the largest of its reaped children (DataLoader workers)."""
    gc.collect()
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"main_mib": round(self_kib / 1024, 1), "largest_worker_mib": round(child_kib / 1024, 1)}


# --------------------------------------------------------------------------- mmtune side (subprocess)


def run_mmtune(plan: dict) -> dict:
    import mmtune

    t0 = time.perf_counter()
    result = mmtune.train(mmtune_recipe(plan))
    wall = time.perf_counter() - t0
    out = mmtune_throughput(result.run_dir)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    records = sorted((r for r in records if "data_wait" in r), key=lambda r: r["step"])
    # data_wait is a share of each logged interval; weight by the interval's seconds (targets / tokens_per_s).
    waits, secs, prev = [], [], 0
    for r in records:
        seconds = (r["targets_seen"] - prev) / r["tokens_per_s"]
        prev = r["targets_seen"]
        if r["step"] > 1:
            waits.append(r["data_wait"] * seconds)
            secs.append(seconds)
    out.update({
        "data_wait": sum(waits) / sum(secs) if secs else float("nan"),
        "data_wait_step1": records[0]["data_wait"] if records else None,
        "data_wait_max": max((r["data_wait"] for r in records if r["step"] > 1), default=float("nan")),
        "wall_s_phase": wall,
    })
    summary = json.loads((result.run_dir / "summary.json").read_text())
    out["packing_utilisation"] = summary.get("packing_utilisation")
    # The run log's parameter table ends with "all  TRAINABLE  TOTAL  (x% trainable)".
    line = next(l for l in (result.run_dir / "train.log").read_text().splitlines() if " params: all " in l)
    trainable, total = (int(x.replace(",", "")) for x in line.split(" params: all ", 1)[1].split()[:2])
    out["params"] = {"trainable": trainable, "total": total}
    del result
    out["rss"] = peak_rss_mib()
    return out


# --------------------------------------------------------------------------- baseline side (subprocess)


class LlavaFeatures(torch.utils.data.Dataset):
    """Token ids and labels as prepared; each image decoded and preprocessed on access (in a worker)."""

    def __init__(self, features: list[dict], transform) -> None:
        self.features = features
        self.transform = transform

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        from mmtune.modalities.image import load_rgb

        f = self.features[i]
        pixels = [self.transform(load_rgb(p)) for p in f["images"]]
        return {"input_ids": f["input_ids"], "attention_mask": [1] * len(f["input_ids"]),
                "labels": f["labels"], "pixel_values": pixels}


class LlavaCollator:
    """Pad ids / mask / labels to the batch's longest sample; stack the batch's images in order."""

    def __init__(self, tokenizer) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.text = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features):
        images = [p for f in features for p in f["pixel_values"]]
        batch = self.text([{k: v for k, v in f.items() if k != "pixel_values"} for f in features])
        if images:
            batch["pixel_values"] = torch.stack(images)
        labels, mask = batch["labels"], batch["attention_mask"]
        # Counted here, in the worker: sent back with the batch as plain ints the model does not see.
        batch["_stats"] = torch.tensor([len(features), int((labels != -100).sum()), mask.numel(),
                                        int((mask == 0).sum())])
        return batch


def build_hf_llava(plan: dict):
    """LlavaForConditionalGeneration with the saved CLIP tower and LLM weights; projector random (seeded)."""
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration

    text_cfg = AutoConfig.from_pretrained(plan["llm_dir"])
    clip = CLIPVisionModel.from_pretrained(plan["clip_dir"], dtype=torch.float32)
    cfg = LlavaConfig(vision_config=clip.config, text_config=text_cfg, image_token_id=plan["image_token_id"],
                      vision_feature_layer=SELECT_LAYER, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", multimodal_projector_bias=True,
                      tie_word_embeddings=text_cfg.tie_word_embeddings)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(cfg).to(torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(plan["llm_dir"], dtype=torch.float32)
    model.model.language_model.load_state_dict(llm.model.state_dict())
    model.lm_head.load_state_dict(llm.lm_head.state_dict())
    model.model.vision_tower.load_state_dict(clip.state_dict())
    if text_cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
    del llm, clip
    return model


def run_hf(plan: dict) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    from mmtune.models.multimodal.encoders import CLIP_MEAN, CLIP_STD
    from mmtune.modalities.image import ImageTransform

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    class StatsTrainer(Trainer):
        """Trainer that strips the collator's bookkeeping before the model sees the batch."""

        stats: list[list[int]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.stats.append(inputs.pop("_stats").tolist())
            return super().training_step(model, inputs, num_items_in_batch)

    t0 = time.perf_counter()
    set_seed(SEED)
    model = build_hf_llava(plan)
    model.config.use_cache = False
    target = r".*language_model.*\.(" + "|".join(LLM_LINEARS) + r")$"
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=target, task_type="CAUSAL_LM"))
    for p in model.base_model.model.model.multi_modal_projector.parameters():
        p.requires_grad_(True)  # the connector trains fully, as on mmtune's side
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(Path(plan["hf_run"]).parent / "tokenizer")
    features = json.loads((Path(plan["hf_run"]).parent / "hf-features.json").read_text())
    size = CLIP_VISION["image_size"]
    dataset = LlavaFeatures(features, ImageTransform(size, CLIP_MEAN, CLIP_STD, "pad"))
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=plan["hf_run"], per_device_train_batch_size=plan["baseline_bs"], gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        optim="adamw_torch_fused", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        logging_steps=10**9, report_to=[], save_strategy="no", use_cpu=True, bf16=False, fp16=False,
        dataloader_num_workers=plan["workers"], dataloader_pin_memory=False, remove_unused_columns=False,
        label_names=["labels"], disable_tqdm=True, seed=SEED,
    )
    trainer = StatsTrainer(model=model, args=args, train_dataset=dataset, data_collator=LlavaCollator(tokenizer),
                           callbacks=[timer])
    trainer.remove_callback(PrinterCallback)
    result = trainer.train()
    wall = time.perf_counter() - t0

    steps = len(timer.end)
    stats = trainer.stats[:steps]
    timed = stats[1:]
    targets_timed = sum(s[1] for s in timed)
    e2e = timer.end[-1] - timer.end[0] if steps > 1 else float("nan")
    compute = sum(e - b for b, e in zip(timer.begin[1:], timer.end[1:]))
    # Between one step's end and the next step's begin, the Trainer fetches the next batch.
    wait = sum(b - e for b, e in zip(timer.begin[1:], timer.end[:-1]))
    per_step = [s[1] / (timer.end[i + 1] - timer.end[i]) for i, s in enumerate(timed)]
    fed, pad = sum(s[2] for s in stats), sum(s[3] for s in stats)
    out = {
        "batch_size": plan["baseline_bs"], "steps": steps, "timed_steps": max(0, steps - 1),
        "samples": sum(s[0] for s in stats), "targets_total": sum(s[1] for s in stats),
        "targets_timed": targets_timed, "seconds_timed": e2e, "seconds_timed_compute_only": compute,
        "tok_s": targets_timed / e2e if e2e > 0 else float("nan"),
        "tok_s_compute_only": targets_timed / compute if compute > 0 else float("nan"),
        "data_wait": wait / e2e if e2e > 0 else float("nan"),
        "step1_seconds": (timer.end[0] - timer.begin[0]) if steps else None,
        "tokens_fed": fed, "pad_tokens": pad, "padding_fraction": pad / fed if fed else 0.0,
        "final_loss": result.training_loss, "step_tok_s": spread(per_step), "wall_s_phase": wall,
        "params": {"trainable": trainable, "total": total},
    }
    del trainer, model
    out["rss"] = peak_rss_mib()
    return out


# --------------------------------------------------------------------------- orchestration


def run_side(side: str, work: Path) -> dict:
    """Run one side in a fresh Python process (its own peak RSS); its figures come back as JSON."""
    out = work / f"result-{side}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", side, "--work", str(work)],
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its log is above")
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def print_report(plan: dict, mm: dict, bl: dict) -> dict:
    ratio = mm["tok_s"] / bl["tok_s"] if bl["tok_s"] > 0 else float("nan")
    rows = [
        ("", "mmtune (packed)", "HF Llava + Trainer (padded)"),
        ("samples per optimizer step", f"{plan['samples'] / max(mm['steps'], 1):.2f} ({plan['micro_batch_size']} rows)",
         f"{bl['batch_size']}"),
        *timing_rows(mm, bl),
        (f"data wait, {plan['workers']} workers (max step)", f"{mm['data_wait']:.2%} ({mm['data_wait_max']:.2%})",
         f"{bl['data_wait']:.2%}"),
        ("pad fraction of fed tokens", f"{plan['mm_pad_fraction_fed']:.1%}", f"{bl['padding_fraction']:.1%}"),
        ("packing utilisation", f"{mm['packing_utilisation']:.1%}", "-"),
        ("peak RSS MiB main / largest worker", f"{mm['rss']['main_mib']:.0f} / {mm['rss']['largest_worker_mib']:.0f}",
         f"{bl['rss']['main_mib']:.0f} / {bl['rss']['largest_worker_mib']:.0f}"),
        ("process wall s (incl. load)", f"{mm['process_wall_s']:.1f}", f"{bl['process_wall_s']:.1f}"),
        ("parameters trainable / total", f"{mm['params']['trainable']:,} / {mm['params']['total']:,}",
         f"{bl['params']['trainable']:,} / {bl['params']['total']:,}"),
        ("final loss", f"{mm['final_loss']:.4f}", f"{bl['final_loss']:.4f} (mean)"),
    ]
    print(f"\n--- results: llm {plan['llm']} ({plan['samples']} samples, {plan['images']} images, "
          f"max_length {plan['max_length']}) ---")
    print_table(rows)
    same = mm["targets_total"] == bl["targets_total"]
    if not same:
        print(f"WARNING: the two sides trained different target counts ({mm['targets_total']} vs {bl['targets_total']})")
    print(f"ratio mmtune/baseline: {ratio:.2f}x (vs baseline compute-only: "
          f"{mm['tok_s'] / bl['tok_s_compute_only']:.2f}x); target >= 1.5x: {'MET' if ratio >= 1.5 else 'NOT MET'}")
    print(f"mmtune data wait: {mm['data_wait']:.2%} of step time; target < 5%: "
          f"{'MET' if mm['data_wait'] < 0.05 else 'NOT MET'}")
    print(f"RESULT llm={plan['llm']} mmtune_tok_s={mm['tok_s']:.1f} baseline_tok_s={bl['tok_s']:.1f} "
          f"ratio={ratio:.2f}x mmtune_data_wait={mm['data_wait']:.4f} baseline_data_wait={bl['data_wait']:.4f} "
          f"mmtune_peak_rss_mib={mm['rss']['main_mib']:.0f} baseline_peak_rss_mib={bl['rss']['main_mib']:.0f} "
          f"target_1.5x={'met' if ratio >= 1.5 else 'not_met'} target_wait_5pct={'met' if mm['data_wait'] < 0.05 else 'not_met'}")
    return {"ratio": ratio, "same_targets": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--repeat", type=int, default=4, help="times the 70-conversation set is repeated (default 4)")
    p.add_argument("--max-length", type=int, default=512, help="mmtune's packed row length (default 512)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="mmtune rows per optimizer step (default 2)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides (default 2)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    p.add_argument("--side", choices=["mmtune", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.side:  # a child process: one side, figures to result-SIDE.json
        plan = json.loads((args.work / "plan.json").read_text())
        result = run_mmtune(plan) if args.side == "mmtune" else run_hf(plan)
        (args.work / f"result-{args.side}.json").write_text(json.dumps(result, default=str))
        return 0

    t_start = time.perf_counter()
    print(f"mmtune LLaVA benchmark: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"CUDA {'on' if torch.cuda.is_available() else 'off'}")
    print(f"load average at start (1/5/15 min): {_loadavg()}  (other busy processes skew the figures)")
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-llava-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        plan = prepare(work, llm=args.llm, repeat=args.repeat, max_length=args.max_length,
                       micro_batch_size=args.micro_batch_size, workers=args.workers)
        (work / "plan.json").write_text(json.dumps(plan))
        print(f"setup (models, data, tokenization; not timed): {time.perf_counter() - t0:.1f}s")
        lens = plan["lengths"]
        print(f"data: datasets/mmtune-vision x{plan['repeat']}: {plan['samples']} samples, {plan['images']} images "
              f"of {plan['image_tokens']} tokens, {plan['truncated']} truncated")
        print(f"sample length (tokens, images expanded): min {lens['min']}  mean {lens['mean']:.1f}  "
              f"p50 {lens['p50']:.0f}  p95 {lens['p95']:.0f}  max {lens['max']}  total {lens['total']:,}; "
              f"trained targets {plan['targets_in_data']:,}")
        print(f"model: CLIP vision {CLIP_VISION['num_hidden_layers']}x{CLIP_VISION['hidden_size']} at "
              f"{CLIP_VISION['image_size']}px (frozen, layer {SELECT_LAYER}, patch tokens) + mlp2x_gelu (full) + "
              f"{plan['llm_name']} (LoRA r={LORA['rank']} all-linear); baseline image token "
              f"{plan['image_token']!r} (id {plan['image_token_id']}, absent from the data)")
        print(f"mmtune: {plan['rows']} packed rows of {plan['max_length']} (utilisation {plan['utilisation']:.1%}), "
              f"{plan['micro_batch_size']} rows/step -> {plan['mm_steps']} steps; baseline: batch "
              f"{plan['baseline_bs']} samples -> {plan['baseline_steps']} steps; {plan['workers']} DataLoader "
              f"workers each; lr {LR} constant, fused AdamW, fp32, seed {SEED}", flush=True)
        print("-- mmtune side (subprocess) ...", flush=True)
        mm = run_side("mmtune", work)
        print(f"   done: {mm['steps']} steps, {mm['tok_s']:.1f} trained tok/s, data wait {mm['data_wait']:.2%}", flush=True)
        print("-- HF LlavaForConditionalGeneration + Trainer side (subprocess) ...", flush=True)
        bl = run_side("hf", work)
        print(f"   done: {bl['steps']} steps, {bl['tok_s']:.1f} trained tok/s", flush=True)
    verdict = print_report(plan, mm, bl)
    total = time.perf_counter() - t_start
    print(f"load average at end (1/5/15 min): {_loadavg()}")
    print(f"total wall time: {total:.1f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"total_wall_s": total, "plan": plan, "mmtune": mm, "baseline": bl,
                                        **verdict}, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
