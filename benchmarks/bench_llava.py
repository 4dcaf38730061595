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
import json
import math
import os
import platform
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

from common import (  # noqa: E402
    add_side_args, finish, length_stats, llm_dir, loadavg, media_data_section, mmtune_fed_padding, mmtune_side,
    peak_rss_mib, run_sides, side_main, tokenizer_and_media, train_section, trained_targets, train_with_stats,
    trainer_figures, training_arguments, with_stats,
)
from report import (  # noqa: E402
    print_side_process_targets, print_table, side_process_rows, side_process_target_flags, timing_rows, tok_s_ratio,
)

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
        "data": media_data_section(plan, "auto", VISION_IMAGES),
        "method": {"name": "lora", "lora": dict(LORA),
                   "media": {"image": {"encoder": {"trainable": "frozen"}, "connector": {"trainable": "full"}}}},
        "train": train_section(micro_batch_size=plan["micro_batch_size"], lr=LR, seed=SEED),
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
    from mmtune.data.packing import make_rows, packing_utilisation
    from mmtune.data.pipeline import build_conversation_data

    llm_path = llm_dir(llm, work, max_positions=max(1024, max_length))
    clip_dir = build_clip_tower(work / "clip-tower")
    data_path = work / "llava-repeated.json"
    written = write_repeated_llava(data_path, repeat)
    plan = {
        "llm": llm, "llm_name": str(llm_path), "llm_dir": str(llm_path), "clip_dir": str(clip_dir),
        "data_path": str(data_path), "cache_dir": str(work / "cache"), "mmtune_run": str(work / "run-mmtune"),
        "hf_run": str(work / "run-hf"), "max_length": max_length, "micro_batch_size": micro_batch_size,
        "workers": workers, "repeat": repeat, "written": written,
    }
    rc = validate_recipe(mmtune_recipe(plan), source="benchmark recipe")
    tokenizer, specs, image_tokens = tokenizer_and_media(rc, llm_path)
    data = build_conversation_data(tokenizer, rc.data, seed=rc.train.seed, media=specs)
    view = data.train
    lengths = view.lengths()
    targets = trained_targets(view)
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
        "lengths": length_stats(lengths),
        "targets_in_data": int(targets.sum()), "rows": len(rows), "mm_steps": mm_steps,
        "utilisation": packing_utilisation(rows, lengths, max_length), "baseline_bs": baseline_bs,
        "mm_pad_fraction_fed": mmtune_fed_padding(lengths, max_length, micro_batch_size, SEED)["pad_fraction_fed"],
        "baseline_steps": math.ceil(len(view) / baseline_bs),
    })
    return plan


# --------------------------------------------------------------------------- mmtune side (subprocess)


def run_mmtune(plan: dict) -> dict:
    out, records = mmtune_side(mmtune_recipe(plan))
    out["data_wait_step1"] = records[0]["data_wait"] if records else None
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
        return with_stats(batch, len(features))


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
    from transformers import AutoTokenizer, set_seed

    from mmtune.models.multimodal.encoders import CLIP_MEAN, CLIP_STD
    from mmtune.modalities.image import ImageTransform

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
    args = training_arguments(plan["hf_run"], batch_size=plan["baseline_bs"], workers=plan["workers"], lr=LR,
                              seed=SEED, logging_steps=10**9)
    trainer, timer, result = train_with_stats(model, args, dataset, LlavaCollator(tokenizer))
    wall = time.perf_counter() - t0
    out = trainer_figures(timer, trainer.stats, plan["baseline_bs"])
    out.update({"final_loss": result.training_loss, "wall_s_phase": wall,
                "params": {"trainable": trainable, "total": total}})
    del trainer, model
    out["rss"] = peak_rss_mib()
    return out


# --------------------------------------------------------------------------- orchestration


def print_report(plan: dict, mm: dict, bl: dict) -> dict:
    ratio = tok_s_ratio(mm, bl)
    rows = [
        ("", "mmtune (packed)", "HF Llava + Trainer (padded)"),
        ("samples per optimizer step", f"{plan['samples'] / max(mm['steps'], 1):.2f} ({plan['micro_batch_size']} rows)",
         f"{bl['batch_size']}"),
        *timing_rows(mm, bl),
        *side_process_rows(plan, mm, bl),
        ("final loss", f"{mm['final_loss']:.4f}", f"{bl['final_loss']:.4f} (mean)"),
    ]
    print(f"\n--- results: llm {plan['llm']} ({plan['samples']} samples, {plan['images']} images, "
          f"max_length {plan['max_length']}) ---")
    print_table(rows)
    same = print_side_process_targets(mm, bl, ratio)
    print(f"RESULT llm={plan['llm']} mmtune_tok_s={mm['tok_s']:.1f} baseline_tok_s={bl['tok_s']:.1f} "
          f"ratio={ratio:.2f}x mmtune_data_wait={mm['data_wait']:.4f} baseline_data_wait={bl['data_wait']:.4f} "
          f"mmtune_peak_rss_mib={mm['rss']['main_mib']:.0f} baseline_peak_rss_mib={bl['rss']['main_mib']:.0f} "
          f"{side_process_target_flags(mm, ratio)}")
    return {"ratio": ratio, "same_targets": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--repeat", type=int, default=4, help="times the 70-conversation set is repeated (default 4)")
    p.add_argument("--max-length", type=int, default=512, help="mmtune's packed row length (default 512)")
    p.add_argument("--micro-batch-size", type=int, default=2, help="mmtune rows per optimizer step (default 2)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers on both sides (default 2)")
    add_side_args(p)
    args = p.parse_args(argv)

    if args.side:  # a child process: one side, figures to result-SIDE.json
        return side_main(args.side, args.work, {"mmtune": run_mmtune, "hf": run_hf})

    t_start = time.perf_counter()
    print(f"mmtune LLaVA benchmark: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"CUDA {'on' if torch.cuda.is_available() else 'off'}")
    print(f"load average at start (1/5/15 min): {loadavg()}  (other busy processes skew the figures)")
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
        mm, bl = run_sides(__file__, work, "HF LlavaForConditionalGeneration")
    verdict = print_report(plan, mm, bl)
    return finish(t_start, args.out, plan=plan, mmtune=mm, baseline=bl, **verdict)


if __name__ == "__main__":
    raise SystemExit(main())
