"""How the benchmark scripts measure both sides (mmtune vs a Hugging Face ``Trainer`` baseline, on CPU).

One place for what every script measures the same way, so the figures of
``bench_text_sft.py``, ``bench_llava.py`` and ``bench_instructblip.py`` mean the same thing:

* the setting: load average, the LLM both sides train (the tests' tiny random
  Llama with SmolLM2's tokenizer, or SmolLM2-135M-Instruct from mmtune's cache);
* the data: length statistics, trained targets per sample, the padding mmtune feeds;
* mmtune's side: the recipe's ``train`` section (and the two-process scripts'
  ``data`` section), trained tokens/s and data wait from its ``metrics.jsonl``
  (step 1 excluded: it holds the warm-up), packing utilisation, parameter counts;
* the baseline's side: ``TrainingArguments`` equal to mmtune's recipe, a step
  timer, the counts each batch carries from its DataLoader worker, the figures
  computed from them;
* the scripts that run each side in its own subprocess (its peak RSS its own):
  starting a side, its figures coming back as JSON, peak RSS.

The printed table is ``report.py``'s.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = "smollm2-135m-instruct"

# --------------------------------------------------------------------------- the setting and the data


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def llm_dir(llm: str, work: Path, **tiny) -> Path:
    """The LLM both sides train: ``tiny`` (a 2-layer, 64-wide random Llama with SmolLM2's tokenizer, the tests'
    tiny model, built under ``work`` with ``build_tiny_llama(**tiny)``), else SmolLM2-135M-Instruct."""
    from mmtune.config.schema import ModelConfig
    from mmtune.models.aliases import resolve_alias
    from mmtune.models.loading import load_tokenizer
    from mmtune.models.tiny import build_tiny_llama

    smol_dir = resolve_alias(SMOLLM2)
    if llm != "tiny":
        return smol_dir
    return build_tiny_llama(work / "tiny-llama", load_tokenizer(ModelConfig(name=str(smol_dir))), **tiny)


def tokenizer_and_media(rc, llm_path: str | Path) -> tuple:
    """The recipe's tokenizer (its template installed), its branches' ``MediaInputSpec``s and the image tokens
    per image, from the model mmtune builds (encoder patches -> connector outputs)."""
    from transformers import AutoModelForCausalLM

    from mmtune.data.templates import install_template
    from mmtune.models.loading import load_tokenizer
    from mmtune.models.open import open_multimodal

    tokenizer = load_tokenizer(rc.model)
    install_template(tokenizer, rc.data.template)
    llm = AutoModelForCausalLM.from_pretrained(str(llm_path), dtype=torch.float32)
    probe = open_multimodal(rc.model.branches(), llm)
    specs = probe.media_specs(tokenizer)
    image_tokens = probe.branches["image"].num_tokens
    del probe, llm
    return tokenizer, specs, image_tokens


def untrained_model(recipe: dict):
    """The multimodal model of ``recipe`` as training starts it (random encoders and connectors, LoRA at zero),
    in eval mode, and its tokenizer: the "before" of a demo's held-out accuracy."""
    from mmtune.config.loader import validate_recipe
    from mmtune.data.templates import install_template
    from mmtune.models.loading import load_tokenizer
    from mmtune.models.open import open_language_model, open_multimodal
    from mmtune.training.methods import apply_method

    cfg = validate_recipe(recipe)
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.model)
    install_template(tokenizer, cfg.data.template)
    llm = apply_method(open_language_model(cfg.model), cfg.method)
    return open_multimodal(cfg.model.branches(), llm).eval(), tokenizer


def held_out_accuracy(model, tokenizer, data_dir: Path, group_by: str | None = None) -> dict:
    """Exact match on ``data_dir/heldout.yaml`` (a ``mmtune data synth`` folder), greedy, 4 new tokens:
    ``{"overall": ..., <group>: ...}``."""
    from mmtune.evaluation import evaluate
    from mmtune.generation.options import GenerationOptions

    report = evaluate(model, tokenizer, str(data_dir / "heldout.yaml"), metrics=["exact"], group_by=group_by,
                      opts=GenerationOptions(max_new_tokens=4), records=False, progress=False)
    exact = report.metrics["exact"]
    return {"overall": exact["accuracy"], **{k: v["accuracy"] for k, v in exact.get("by_group", {}).items()}}


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q))


def spread(values: list[float]) -> dict:
    if not values:
        return {"p50": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"p50": float(np.median(values)), "min": float(min(values)), "max": float(max(values))}


def length_stats(lengths: np.ndarray) -> dict:
    """Sample lengths in tokens: min, mean, p50, p95, max and total."""
    return {"min": int(lengths.min()), "mean": float(lengths.mean()), "p50": pct(lengths, 50),
            "p95": pct(lengths, 95), "max": int(lengths.max()), "total": int(lengths.sum())}


def trained_targets(view) -> np.ndarray:
    """Trained targets per sample of a tokenized view (a target is predicted from the token before it)."""
    return np.array([int(np.asarray(view[k][1])[1:].sum()) for k in range(len(view))])


def mmtune_fed_padding(lengths: np.ndarray, max_length: int, micro_batch_size: int, seed: int) -> dict:
    """Replay mmtune's rows and micro-batches to count the pad tokens it feeds (rows pad to the batch's widest, x8)."""
    from mmtune.data.packing import make_rows
    from mmtune.training.loop import micro_batch_order

    rows = make_rows(lengths, max_length, True)
    real = fed = 0
    for batch in micro_batch_order(len(rows), micro_batch_size, seed=seed, epoch=0, shuffle=True):
        widths = [int(sum(lengths[i] for i in rows[r])) for r in batch]
        width = -(-max(widths) // 8) * 8
        real += sum(widths)
        fed += width * len(batch)
    return {"rows": len(rows), "pad_fraction_fed": 1 - real / fed if fed else 0.0}


# --------------------------------------------------------------------------- mmtune's side


def media_data_section(plan: dict, template: str, media_folder: Path) -> dict:
    """The recipe's ``data`` section of the two-process benchmarks: the plan's LLaVA-format file, packed rows of
    ``plan['max_length']``, all of it for training, shuffled, tokenized into ``plan['cache_dir']`` (the cache
    the parent fills first), images decoded by ``plan['workers']`` DataLoader workers."""
    return {
        "datasets": [{"path": plan["data_path"], "format": "llava", "media_folder": str(media_folder)}],
        "template": template,
        "max_length": plan["max_length"],
        "packing": True,
        "val_fraction": 0.0,
        "cache_dir": plan["cache_dir"],
        "shuffle": True,
        "num_workers": plan["workers"],
    }


def train_section(*, micro_batch_size: int, lr: float, seed: int) -> dict:
    """The recipe's ``train`` section, equal to the baseline's :func:`training_arguments`: one epoch, constant lr
    without warm-up, no weight decay, gradient clipping at 1, fp32; every step logged, nothing else written."""
    return {
        "seed": seed,
        "epochs": 1,
        "micro_batch_size": micro_batch_size,
        "grad_accum_steps": 1,
        "lr": lr,
        "weight_decay": 0.0,
        "scheduler": "constant",
        "warmup_steps": 0,
        "max_grad_norm": 1.0,
        "mixed_precision": "no",
        "log_every": 1,
        "eval_every": None,
        "save_every": None,
        "tensorboard": False,
        "progress": False,
    }


def mmtune_throughput(run_dir: Path) -> dict:
    """Trained tokens/s from metrics.jsonl, step 1 excluded (it holds the warm-up)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "tokens_per_s" in r]
    records.sort(key=lambda r: r["step"])
    tokens = seconds = 0.0
    prev_seen = None
    per_step = []
    for r in records:
        step_targets = r["targets_seen"] - (prev_seen if prev_seen is not None else 0)
        prev_seen = r["targets_seen"]
        if r["step"] == 1:
            continue
        tokens += step_targets
        seconds += step_targets / r["tokens_per_s"] if r["tokens_per_s"] > 0 else 0.0
        per_step.append(r["tokens_per_s"])
    first = records[0] if records else None
    return {
        "steps": len(records),
        "timed_steps": sum(1 for r in records if r["step"] > 1),
        "targets_total": records[-1]["targets_seen"] if records else 0,
        "targets_timed": int(tokens),
        "seconds_timed": seconds,
        "tok_s": tokens / seconds if seconds > 0 else float("nan"),
        "step1_seconds": (first["targets_seen"] / first["tokens_per_s"]) if first and first["tokens_per_s"] else None,
        "final_loss": records[-1]["loss"] if records else None,
        "step_tok_s": spread(per_step),
    }


def data_wait_records(run_dir: Path) -> list[dict]:
    """The run's metrics records that carry a data wait, by step."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return sorted((r for r in records if "data_wait" in r), key=lambda r: r["step"])


def mmtune_side(recipe: dict) -> tuple[dict, list[dict]]:
    """Train ``recipe`` with mmtune (in a side's own process): its figures (throughput, data wait, packing
    utilisation, parameters, phase seconds, peak RSS) and its metrics records with a data wait."""
    import mmtune

    t0 = time.perf_counter()
    result = mmtune.train(recipe)
    wall = time.perf_counter() - t0
    out = mmtune_throughput(result.run_dir)
    records = data_wait_records(result.run_dir)
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
    return out, records


# --------------------------------------------------------------------------- the baseline's side


def training_arguments(output_dir: str | Path, *, batch_size: int, workers: int, lr: float, seed: int,
                       logging_steps: int):
    """``TrainingArguments`` equal to mmtune's recipe (:func:`train_section`): one epoch, constant lr without warm-up, fused AdamW, no
    weight decay, gradient clipping at 1, fp32 on the CPU, nothing saved or reported."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=1,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        optim="adamw_torch_fused",  # mmtune uses torch.optim.AdamW(fused=True), on CPU too
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        logging_steps=logging_steps,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=workers,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=True,
        seed=seed,
    )


def step_timer():
    """A ``TrainerCallback`` noting the time each optimizer step begins (``.begin``) and ends (``.end``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.begin: list[float] = []
            self.end: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    return StepTimer()


def with_stats(batch: dict, samples: int) -> dict:
    """Add the batch's counts (samples, trained targets, fed tokens, pad tokens) for :func:`train_with_stats`."""
    labels, mask = batch["labels"], batch["attention_mask"]
    # Counted here, in the worker: sent back with the batch as plain ints the model does not see.
    batch["_stats"] = torch.tensor([samples, int((labels != -100).sum()), mask.numel(), int((mask == 0).sum())])
    return batch


def train_with_stats(model, args, dataset, collator):
    """``Trainer.train`` on batches from a collator that adds :func:`with_stats`, timed per step; returns the
    trainer (``.stats``: each step's counts, in order), the step timer and the train output."""
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    class StatsTrainer(Trainer):
        """Trainer that strips the collator's bookkeeping before the model sees the batch."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.stats: list[list[int]] = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.stats.append(inputs.pop("_stats").tolist())
            return super().training_step(model, inputs, num_items_in_batch)

    timer = step_timer()
    trainer = StatsTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no end-of-training dict on stdout
    result = trainer.train()
    return trainer, timer, result


def trainer_figures(timer, stats: list[list[int]], batch_size: int) -> dict:
    """The baseline's figures from its step times and its batches' counts (:func:`train_with_stats`)."""
    steps = len(timer.end)
    stats = stats[:steps]
    timed = stats[1:]
    targets_timed = sum(s[1] for s in timed)
    e2e = timer.end[-1] - timer.end[0] if steps > 1 else float("nan")
    compute = sum(e - b for b, e in zip(timer.begin[1:], timer.end[1:]))
    # Between one step's end and the next step's begin, the Trainer fetches the next batch.
    wait = sum(b - e for b, e in zip(timer.begin[1:], timer.end[:-1]))
    per_step = [s[1] / (timer.end[i + 1] - timer.end[i]) for i, s in enumerate(timed)]
    fed, pad = sum(s[2] for s in stats), sum(s[3] for s in stats)
    return {
        "batch_size": batch_size, "steps": steps, "timed_steps": max(0, steps - 1),
        "samples": sum(s[0] for s in stats), "targets_total": sum(s[1] for s in stats),
        "targets_timed": targets_timed, "seconds_timed": e2e, "seconds_timed_compute_only": compute,
        "tok_s": targets_timed / e2e if e2e > 0 else float("nan"),
        "tok_s_compute_only": targets_timed / compute if compute > 0 else float("nan"),
        "data_wait": wait / e2e if e2e > 0 else float("nan"),
        "step1_seconds": (timer.end[0] - timer.begin[0]) if steps else None,
        "tokens_fed": fed, "pad_tokens": pad, "padding_fraction": pad / fed if fed else 0.0,
        "step_tok_s": spread(per_step),
    }


# --------------------------------------------------------------------------- one process per side


def peak_rss_mib() -> dict:
    """Kernel high-water marks: this process, and the largest of its reaped children (DataLoader workers)."""
    gc.collect()
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"main_mib": round(self_kib / 1024, 1), "largest_worker_mib": round(child_kib / 1024, 1)}


def add_side_args(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--keep``, and the hidden ``--side`` / ``--work`` a side's process is started with."""
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    parser.add_argument("--side", choices=["mmtune", "hf"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)


def run_side(script: str | Path, side: str, work: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run one side of ``script`` in a fresh Python process (its own peak RSS; ``args`` and ``env`` added to its
    command line and environment); its figures come back as JSON."""
    out = work / f"result-{side}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--side", side, "--work", str(work), *args],
                          env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed (exit {proc.returncode}); its log is above")
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def run_sides(script: str | Path, work: Path, baseline: str, *args: str, env: dict[str, str] | None = None):
    """Run mmtune's side of ``script``, then the baseline's (:func:`run_side`), each reported when done."""
    print("-- mmtune side (subprocess) ...", flush=True)
    mm = run_side(script, "mmtune", work, *args, env=env)
    print(f"   done: {mm['steps']} steps, {mm['tok_s']:.1f} trained tok/s, data wait {mm['data_wait']:.2%}",
          flush=True)
    print(f"-- {baseline} + Trainer side (subprocess) ...", flush=True)
    bl = run_side(script, "hf", work, *args, env=env)
    print(f"   done: {bl['steps']} steps, {bl['tok_s']:.1f} trained tok/s", flush=True)
    return mm, bl


def side_main(side: str, work: Path, runners: dict) -> int:
    """In a side's process: run ``runners[side]`` on the plan in ``work``; its figures to ``result-SIDE.json``."""
    plan = json.loads((work / "plan.json").read_text())
    result = runners[side](plan)
    (work / f"result-{side}.json").write_text(json.dumps(result, default=str))
    return 0


def finish(t_start: float, out: Path | None, **figures) -> int:
    """Print the load average at the end and the total wall time since ``t_start``; write ``figures`` with that
    time to ``out`` when given."""
    total = time.perf_counter() - t_start
    print(f"load average at end (1/5/15 min): {loadavg()}")
    print(f"total wall time: {total:.1f}s")
    if out:
        write_figures(out, {"total_wall_s": total, **figures})
    return 0


def write_figures(path: Path, figures: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2, default=str))
    print(f"wrote {path}")
