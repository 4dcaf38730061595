#!/usr/bin/env python
"""Benchmark: mmtune's packed text SFT vs a padded ``transformers.Trainer`` and TRL's ``SFTTrainer``, on CPU.

In one process, on the same model and the same tokenized mixed-length chat
data, train LoRA (peft, all-linear, same rank / alpha / dropout / lr / seed,
fp32) twice:

* **mmtune**: ``mmtune.train(recipe)`` with ``data.packing: true``; throughput
  is read back from the run's ``metrics.jsonl`` (``log_every: 1``).
* **baseline**: ``transformers.Trainer`` on padded batches
  (``DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)``)
  fed exactly mmtune's token ids, with ``labels = id where trained else -100``.

* **TRL** (``trl_baseline.py``): ``trl.SFTTrainer`` with its own packing
  (``packing=True``, best-fit decreasing, padding-free rows; as many rows of
  ``max_length`` per step as mmtune) and, separately, padding-free without
  packing (as many samples per step as the ``Trainer`` baseline), on the same
  ids and labels. For TRL and mmtune, the loss of one packed batch against the
  same samples alone tells whether packed samples attend to each other.

All train on the same samples, once each (one epoch), with about the same
number of samples per optimizer step. Printed per model: trained tokens/s
(targets per second of training time, step 1 excluded as warm-up, one-time
setup such as model loading and tokenization excluded), their ratio, the
padding fraction of the baseline's batches, mmtune's packing utilisation, and
the peak RSS of each phase (psutil, sampled in a background thread).

This is a script that prints figures, not a test. Usage::

    python benchmarks/bench_text_sft.py                    # tiny, then smollm2
    python benchmarks/bench_text_sft.py --model tiny --samples 800 --out bench.json
    python benchmarks/bench_text_sft.py --model tiny --samples 40 --sides mmtune trl_packed   # a quick check

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    SMOLLM2, length_stats, llm_dir, loadavg, mmtune_fed_padding, mmtune_throughput, pct, spread, step_timer,
    train_section, trained_targets, training_arguments, write_figures,
)
from report import print_table, timing_rows, tok_s_ratio  # noqa: E402
from trl_baseline import (  # noqa: E402
    TRL_VARIANTS, attends_across, mmtune_packed_vs_unpacked, run_trl, trl_packed_vs_unpacked, trl_trainer,
)

SIDES = ["mmtune", "trainer", *(f"trl_{v}" for v in TRL_VARIANTS)]
TRL_TARGET = 1.3  # mmtune's trained tokens/s over TRL's packed ones, on CPU

SOURCE_JSONL = REPO / "datasets" / "mmtune-instruct" / "train.jsonl"

# The method, identical on both sides (mmtune's recipe keys / peft's LoraConfig).
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
LR = 5.0e-4
SEED = 42
MAX_CONVS = 12  # conversations of the shipped set concatenated into one sample, at most

# Per-model defaults; chosen so `--model both` stays under ~10 minutes on 2 idle CPU cores.
# micro_batch_size 2 gives about 13 (tiny, rows of 1024) and 7 (smollm2, rows of 512)
# samples per optimizer step. With the shipped recipe's 4 rows of 512 the smollm2
# baseline needs batches of ~12 samples padded to ~512 tokens: ~23 GB peak RSS.
DEFAULTS = {
    "tiny": {"samples": 400, "max_length": 1024, "micro_batch_size": 2},
    "smollm2": {"samples": 96, "max_length": 512, "micro_batch_size": 2},
}


# --------------------------------------------------------------------------- memory


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so a phase starts from live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block.

    A background thread samples psutil's RSS every ``interval`` seconds; where
    Linux allows it, the kernel's exact high-water mark (VmHWM, reset at entry)
    is read as a cross-check.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self.hwm: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_ok = False

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        _release_memory()
        self.start = self.peak = _rss()
        self._hwm_ok = _reset_hwm()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, _rss())
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.hwm = _read_hwm() if self._hwm_ok else None

    def as_mib(self) -> dict:
        mib = 1024 * 1024
        return {
            "start_mib": round(self.start / mib, 1),
            "peak_mib": round(self.peak / mib, 1),
            "growth_mib": round((self.peak - self.start) / mib, 1),
            "kernel_hwm_mib": None if self.hwm is None else round(self.hwm / mib, 1),
        }


# --------------------------------------------------------------------------- data


def write_mixed_jsonl(path: Path, n: int, seed: int) -> list[int]:
    """``n`` multi-turn ShareGPT conversations, each 1..MAX_CONVS shipped conversations joined.

    The number joined is long-tailed (log-normal, median ~2, p95 ~7, capped):
    most chat SFT samples are short, a few are long. The first conversation's
    system prompt (if any) is kept; the others' are dropped.
    """
    rows = [json.loads(line) for line in SOURCE_JSONL.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    counts = []
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = int(np.clip(np.rint(rng.lognormal(mean=0.75, sigma=0.75)), 1, MAX_CONVS))
            picks = rng.choice(len(rows), size=k, replace=False)
            conv = [msg for j in picks for msg in rows[j]["conversations"]]
            out = {"id": f"mix-{i:05d}", "conversations": conv}
            if rows[picks[0]].get("system"):
                out["system"] = rows[picks[0]]["system"]
            fh.write(json.dumps(out) + "\n")
            counts.append(k)
    return counts


# --------------------------------------------------------------------------- mmtune side


def mmtune_recipe(model_name: str, data_path: Path, cache_dir: Path, out_dir: Path, *, max_length: int,
                  micro_batch_size: int) -> dict:
    return {
        "output_dir": str(out_dir),
        "model": {"name": model_name, "dtype": "float32", "attn_implementation": "sdpa"},
        "data": {
            "datasets": [{"path": str(data_path), "format": "sharegpt"}],
            "template": "auto",
            "max_length": max_length,
            "packing": True,
            "val_fraction": 0.0,
            "cache_dir": str(cache_dir),
            "shuffle": True,
        },
        "method": {"name": "lora", "lora": dict(LORA)},
        "train": train_section(micro_batch_size=micro_batch_size, lr=LR, seed=SEED),
    }


# --------------------------------------------------------------------------- baseline side


class TokenizedDataset(torch.utils.data.Dataset):
    def __init__(self, features: list[dict]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


class CountingCollator:
    """Wrap the HF collator; record each batch's samples, trained labels and padding, in order."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[dict] = []

    def __call__(self, features):
        batch = self.inner(features)
        labels, mask = batch["labels"], batch["attention_mask"]
        self.batches.append({
            "samples": len(features),
            "targets": int((labels != -100).sum()),
            "fed": int(mask.numel()),
            "pad": int((mask == 0).sum()),
        })
        return batch


def baseline_features(view) -> list[dict]:
    """mmtune's token ids, verbatim; labels = id where mmtune trains the token, else -100."""
    feats = []
    for k in range(len(view)):
        ids, trained = view[k]
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.where(np.asarray(trained, dtype=bool), ids, -100)
        feats.append({"input_ids": ids.tolist(), "attention_mask": [1] * len(ids), "labels": labels.tolist()})
    return feats


def run_baseline(model_dir: Path, tokenizer, features: list[dict], out_dir: Path, *, batch_size: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, set_seed
    from transformers.trainer_callback import PrinterCallback

    set_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch.float32, attn_implementation="sdpa", use_safetensors=True
    )
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(
        r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"], task_type="CAUSAL_LM",
    ))
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    timer = step_timer()
    args = training_arguments(out_dir, batch_size=batch_size, workers=0, lr=LR, seed=SEED, logging_steps=10**9)
    trainer = Trainer(model=model, args=args, train_dataset=TokenizedDataset(features),
                      data_collator=collator, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no end-of-training dict on stdout
    result = trainer.train()

    steps = len(timer.end)
    batches = collator.batches[:steps]  # batch i feeds step i+1 (one batch per step, in order)
    timed = batches[1:]
    targets_timed = sum(b["targets"] for b in timed)
    # End to end, step 2's data fetch and collation included (as in mmtune's interval):
    e2e = timer.end[-1] - timer.end[0] if steps > 1 else float("nan")
    # Inside on_step_begin .. on_step_end only (forward, backward, clip, optimizer): collation excluded.
    compute = sum(e - b for b, e in zip(timer.begin[1:], timer.end[1:]))
    per_step = [b["targets"] / (timer.end[i + 1] - timer.end[i]) for i, b in enumerate(timed)]
    fed = sum(b["fed"] for b in batches)
    pad = sum(b["pad"] for b in batches)
    out = {
        "batch_size": batch_size,
        "steps": steps,
        "timed_steps": max(0, steps - 1),
        "samples": sum(b["samples"] for b in batches),
        "targets_total": sum(b["targets"] for b in batches),
        "targets_timed": targets_timed,
        "seconds_timed": e2e,
        "seconds_timed_compute_only": compute,
        "tok_s": targets_timed / e2e if e2e > 0 else float("nan"),
        "tok_s_compute_only": targets_timed / compute if compute > 0 else float("nan"),
        "step1_seconds": (timer.end[0] - timer.begin[0]) if steps else None,
        "tokens_fed": fed,
        "pad_tokens": pad,
        "padding_fraction": pad / fed if fed else 0.0,
        "final_loss": result.training_loss,
        "step_tok_s": spread(per_step),
    }
    del trainer, model, collator
    return out


# --------------------------------------------------------------------------- one model


def bench_model(which: str, work: Path, *, samples: int, max_length: int, micro_batch_size: int,
                sides: list[str]) -> dict:
    from mmtune import train as mmtune_train
    from mmtune import validate_recipe
    from mmtune.data.pipeline import build_conversation_data
    from mmtune.data.packing import packing_utilisation, make_rows
    from mmtune.data.templates import install_template
    from mmtune.models.loading import load_tokenizer

    print(f"\n=== model: {which} ===", flush=True)
    t_setup = time.perf_counter()
    model_dir = llm_dir(which, work, max_positions=max(1024, max_length))
    model_name = str(model_dir) if which == "tiny" else SMOLLM2

    data_path = work / f"mixed-{which}.jsonl"
    joined = write_mixed_jsonl(data_path, samples, SEED)
    recipe = mmtune_recipe(model_name, data_path, work / "cache", work / f"run-mmtune-{which}",
                           max_length=max_length, micro_batch_size=micro_batch_size)
    rc = validate_recipe(recipe, source="benchmark recipe")

    # Tokenize once with mmtune's own pipeline; mmtune.train below reads the same cache entry.
    tokenizer = load_tokenizer(rc.model)
    install_template(tokenizer, rc.data.template)
    data = build_conversation_data(tokenizer, rc.data, seed=rc.train.seed)
    view = data.train
    lengths = view.lengths()
    trained_per_sample = trained_targets(view)
    features = baseline_features(view)
    setup_s = time.perf_counter() - t_setup
    truncated = sum(r.truncated for r in data.reports)

    rows = make_rows(lengths, max_length, True)
    utilisation = packing_utilisation(rows, lengths, max_length)
    fed_info = mmtune_fed_padding(lengths, max_length, micro_batch_size, SEED)
    mm_steps_expected = math.ceil(len(rows) / micro_batch_size)
    baseline_bs = max(1, round(len(view) / mm_steps_expected))
    baseline_steps_expected = math.ceil(len(view) / baseline_bs)

    print(f"model dir: {model_dir}")
    print(f"data: {len(view)} samples ({samples} written; 1..{MAX_CONVS} shipped conversations joined per sample, "
          f"mean {np.mean(joined):.2f}), {truncated} truncated to max_length={max_length}")
    print(f"sample length (tokens): min {lengths.min()}  mean {lengths.mean():.1f}  p50 {pct(lengths, 50):.0f}  "
          f"p95 {pct(lengths, 95):.0f}  max {lengths.max()}   total {int(lengths.sum()):,}")
    print(f"trained targets per sample: mean {trained_per_sample.mean():.1f}  total {int(trained_per_sample.sum()):,} "
          f"({trained_per_sample.sum() / lengths.sum():.1%} of tokens)")
    print(f"mmtune: {len(rows)} packed rows of {max_length}, micro_batch_size {micro_batch_size} rows -> "
          f"{mm_steps_expected} steps, {len(view) / mm_steps_expected:.2f} samples/step on average")
    print(f"baseline: per_device_train_batch_size {baseline_bs} samples -> {baseline_steps_expected} steps")
    print(f"both: 1 epoch over the same {len(view)} samples, LoRA r={LORA['rank']} alpha={LORA['alpha']} "
          f"dropout={LORA['dropout']} {LORA['target_modules']}, lr {LR} constant, AdamW, fp32, seed {SEED}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"setup (model build/convert, data, tokenization; not timed in throughput): {setup_s:.1f}s", flush=True)

    # ---- mmtune phase
    print("-- mmtune.train (packed) ...", flush=True)
    t0 = time.perf_counter()
    with PeakRSS() as mm_mem:
        result = mmtune_train(recipe)
    mm_wall = time.perf_counter() - t0
    mm = mmtune_throughput(result.run_dir)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    mm.update({
        "wall_s_phase": mm_wall,
        "packing_utilisation": summary.get("packing_utilisation"),
        "rows": fed_info["rows"],
        "pad_fraction_fed": fed_info["pad_fraction_fed"],
        "samples_per_step": len(view) / max(mm["steps"], 1),
        "rss": mm_mem.as_mib(),
    })
    print(f"   done in {mm_wall:.1f}s: {mm['steps']} steps, {mm['tok_s']:.1f} trained tok/s", flush=True)
    del result

    # ---- packed samples attending to each other? mmtune's first micro-batch, packed vs one by one
    mm["leak"] = mmtune_packed_vs_unpacked(model_dir, view, rows[:micro_batch_size], tokenizer.pad_token_id,
                                           LORA, SEED)
    print(f"   packed vs alone: {mm['leak']['abs_diff_per_target']:.2e} nats per target", flush=True)
    _release_memory()

    # ---- baseline phase
    bl = None
    if "trainer" in sides:
        print("-- transformers.Trainer (padded) ...", flush=True)
        t0 = time.perf_counter()
        with PeakRSS() as bl_mem:
            bl = run_baseline(model_dir, tokenizer, features, work / f"run-baseline-{which}", batch_size=baseline_bs)
        bl_wall = time.perf_counter() - t0
        bl.update({"wall_s_phase": bl_wall, "rss": bl_mem.as_mib()})
        print(f"   done in {bl_wall:.1f}s: {bl['steps']} steps, {bl['tok_s']:.1f} trained tok/s", flush=True)
        _release_memory()

    # ---- TRL phases: its packing (rows like mmtune's), its padding-free batches (samples like the Trainer's)
    trl = {}
    for variant in TRL_VARIANTS:
        if f"trl_{variant}" in sides:
            trl[variant] = trl_phase(model_dir, tokenizer, features, work / f"run-trl-{variant}-{which}", variant,
                                     batch_size=micro_batch_size if variant == "packed" else baseline_bs,
                                     max_length=max_length, rows=micro_batch_size)

    if bl is None:
        return {"model": which, "samples": len(view), "max_length": max_length, "micro_batch_size": micro_batch_size,
                "mmtune": mm, "trl": trl, "lengths": length_stats(lengths), "setup_s": setup_s}
    ratio = tok_s_ratio(mm, bl)
    same_targets = mm["targets_total"] == bl["targets_total"]
    return {
        "trl": trl,
        "model": which,
        "model_dir": str(model_dir),
        "samples": len(view),
        "max_length": max_length,
        "micro_batch_size": micro_batch_size,
        "truncated": truncated,
        "lengths": length_stats(lengths),
        "targets_in_data": int(trained_per_sample.sum()),
        "setup_s": setup_s,
        "mmtune": mm,
        "baseline": bl,
        "ratio": ratio,
        "ratio_vs_compute_only": mm["tok_s"] / bl["tok_s_compute_only"] if bl["tok_s_compute_only"] > 0 else None,
        "same_targets": same_targets,
        "target_2x_met": bool(ratio >= 2.0),
    }


def trl_phase(model_dir: Path, tokenizer, features: list[dict], out_dir: Path, variant: str, *, batch_size: int,
              max_length: int, rows: int) -> dict:
    """One TRL side: build (model, LoRA, TRL's own dataset preparation and packing), check packed vs alone on its
    first batch, train one epoch; its figures with the phase's peak RSS."""
    print(f"-- trl.SFTTrainer ({variant}, {batch_size} {'rows' if variant == 'packed' else 'samples'} per step) ...",
          flush=True)
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        trainer = trl_trainer(model_dir, tokenizer, features, out_dir, variant, batch_size=batch_size,
                              max_length=max_length, lora=LORA, lr=LR, seed=SEED)
        leak = trl_packed_vs_unpacked(trainer, rows if variant == "packed" else batch_size)
        out = run_trl(trainer)
    del trainer
    wall = time.perf_counter() - t0
    out.update({"variant": variant, "batch_size": batch_size, "leak": leak, "wall_s_phase": wall, "rss": mem.as_mib(),
                "attention": trl_attention_note()})
    print(f"   done in {wall:.1f}s: {out['steps']} steps, {out['tok_s']:.1f} trained tok/s; packed vs alone: "
          f"{leak['abs_diff_per_target']:.2e} nats per target", flush=True)
    _release_memory()
    return out


def trl_attention_note() -> str:
    """What keeps TRL's padding-free samples apart here: flash-attention's varlen kernels (GPU), or, without them,
    transformers' block mask built from the restarting ``position_ids`` (SDPA)."""
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash-attention available (not used: SDPA on both sides here)"
    return ("SDPA: TRL's padding-free path is documented for flash-attention (GPU), absent here; transformers "
            "builds the per-sample mask from position_ids")


def print_trl_report(r: dict) -> None:
    mm, trl = r["mmtune"], r["trl"]
    if not trl:
        return
    names = list(trl)
    print(f"\n--- TRL SFTTrainer: {r['model']} ---")
    rows = [("", "mmtune (packed)", *[f"TRL {n}" for n in names])]
    rows += [
        ("per step", f"{r['micro_batch_size']} rows", *[f"{trl[n]['batch_size']} {'rows' if n == 'packed' else 'samples'}"
                                                        for n in names]),
        ("optimizer steps", f"{mm['steps']}", *[f"{trl[n]['steps']}" for n in names]),
        ("trained targets", f"{mm['targets_total']:,}", *[f"{trl[n]['targets_total']:,}" for n in names]),
        ("trained tokens/s", f"{mm['tok_s']:.1f}", *[f"{trl[n]['tok_s']:.1f}" for n in names]),
        ("mmtune / this", "1.00x", *[f"{mm['tok_s'] / trl[n]['tok_s']:.2f}x" for n in names]),
        ("peak RSS MiB", f"{mm['rss']['peak_mib']:.0f}", *[f"{trl[n]['rss']['peak_mib']:.0f}" for n in names]),
        ("packed vs alone, nats/target", f"{mm['leak']['abs_diff_per_target']:.2e}",
         *[f"{trl[n]['leak']['abs_diff_per_target']:.2e}" for n in names]),
        ("  loss packed / alone", f"{mm['leak']['loss_packed']:.5f} / {mm['leak']['loss_alone']:.5f}",
         *[f"{trl[n]['leak']['loss_packed']:.5f} / {trl[n]['leak']['loss_alone']:.5f}" for n in names]),
        ("final loss", f"{mm['final_loss']:.4f}", *[f"{trl[n]['final_loss']:.4f} (mean)" for n in names]),
    ]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(len(rows[0]))]
    for row in rows:
        print("".join(f"{cell:<{w}}" for cell, w in zip(row, widths)))
    for n in names:
        if trl[n]["targets_total"] != mm["targets_total"]:
            print(f"WARNING: TRL {n} trained {trl[n]['targets_total']} targets, mmtune {mm['targets_total']}")
    print(f"TRL attention here: {trl[names[0]]['attention']}")
    for side, check in [("mmtune", mm["leak"]), *[(f"TRL {n}", trl[n]["leak"]) for n in names]]:
        print(f"{side}: packed samples attend to each other: {'YES' if attends_across(check) else 'no'} "
              f"({check['samples']} samples, {check['targets']} targets)")
    if "packed" in trl:
        ratio = mm["tok_s"] / trl["packed"]["tok_s"]
        print(f"ratio mmtune/TRL packed: {ratio:.2f}x; target >= {TRL_TARGET}x with zero cross-sample attention: "
              f"{'MET' if ratio >= TRL_TARGET and not attends_across(mm['leak']) else 'NOT MET'}")


def print_report(r: dict) -> None:
    print_trl_report(r)
    if "baseline" not in r:
        return
    mm, bl = r["mmtune"], r["baseline"]
    print(f"\n--- results: {r['model']} ({r['samples']} samples, max_length {r['max_length']}) ---")
    rows = [
        ("", "mmtune (packed)", "HF Trainer (padded)"),
        ("samples per optimizer step", f"{mm['samples_per_step']:.2f} ({r['micro_batch_size']} rows)",
         f"{bl['batch_size']}"),
        *timing_rows(mm, bl),
        ("pad fraction of fed tokens", f"{mm['pad_fraction_fed']:.1%}", f"{bl['padding_fraction']:.1%}"),
        ("packing utilisation", f"{mm['packing_utilisation']:.1%}", "-"),
        ("peak RSS MiB (phase start)", f"{mm['rss']['peak_mib']:.0f} ({mm['rss']['start_mib']:.0f})",
         f"{bl['rss']['peak_mib']:.0f} ({bl['rss']['start_mib']:.0f})"),
        ("  kernel VmHWM MiB", f"{mm['rss']['kernel_hwm_mib']}", f"{bl['rss']['kernel_hwm_mib']}"),
        ("phase wall s (incl. load)", f"{mm['wall_s_phase']:.1f}", f"{bl['wall_s_phase']:.1f}"),
        ("final loss", f"{mm['final_loss']:.4f}", f"{bl['final_loss']:.4f} (mean)"),
    ]
    print_table(rows)
    if not r["same_targets"]:
        print(f"WARNING: the two sides trained different target counts ({mm['targets_total']} vs {bl['targets_total']})")
    print(f"ratio mmtune/baseline: {r['ratio']:.2f}x (vs baseline compute-only: {r['ratio_vs_compute_only']:.2f}x); "
          f"target >= 2x: {'MET' if r['target_2x_met'] else 'NOT MET'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    p.add_argument("--samples", type=int, default=None,
                   help=f"mixed-length samples per model (default: tiny {DEFAULTS['tiny']['samples']}, "
                        f"smollm2 {DEFAULTS['smollm2']['samples']})")
    p.add_argument("--max-length", type=int, default=None,
                   help=f"packed row length / truncation (default: tiny {DEFAULTS['tiny']['max_length']}, "
                        f"smollm2 {DEFAULTS['smollm2']['max_length']})")
    p.add_argument("--micro-batch-size", type=int, default=None, help="mmtune rows per optimizer step (default 2)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (default: a temp dir)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES,
                   help="what to train besides mmtune (always trained): the padded Trainer, TRL packed, TRL "
                        "padding-free (default: all)")
    args = p.parse_args(argv)

    models = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    t_start = time.perf_counter()
    print(f"mmtune text SFT benchmark: python {platform.python_version()}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, CUDA {'on' if torch.cuda.is_available() else 'off'}")
    print(f"load average at start (1/5/15 min): {loadavg()}  (other busy processes skew the figures)")
    if torch.cuda.is_available():
        print("note: a GPU is visible; this benchmark is meant for CPU (mmtune would pick it up)")
    results = []
    with tempfile.TemporaryDirectory(prefix="mmtune-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for which in models:
            d = DEFAULTS[which]
            results.append(bench_model(
                which, work,
                samples=args.samples or d["samples"],
                max_length=args.max_length or d["max_length"],
                micro_batch_size=args.micro_batch_size or d["micro_batch_size"],
                sides=args.sides,
            ))
    for r in results:
        print_report(r)
    total = time.perf_counter() - t_start
    print("\n=== summary ===")
    for r in results:
        for n, side in r["trl"].items():
            print(f"RESULT model={r['model']} side=trl_{n} mmtune_tok_s={r['mmtune']['tok_s']:.1f} "
                  f"trl_tok_s={side['tok_s']:.1f} ratio={r['mmtune']['tok_s'] / side['tok_s']:.2f}x "
                  f"mmtune_peak_rss_mib={r['mmtune']['rss']['peak_mib']:.0f} trl_peak_rss_mib={side['rss']['peak_mib']:.0f} "
                  f"mmtune_packed_vs_alone={r['mmtune']['leak']['abs_diff_per_target']:.2e} "
                  f"trl_packed_vs_alone={side['leak']['abs_diff_per_target']:.2e} "
                  f"trl_attends_across={'yes' if attends_across(side['leak']) else 'no'}")
    results_bl = [r for r in results if "baseline" in r]
    print(f"{'model':<9}{'mmtune tok/s':>14}{'baseline tok/s':>16}{'ratio':>8}{'pad frac':>10}{'util':>8}"
          f"{'RSS mm MiB':>12}{'RSS bl MiB':>12}{'>=2x':>6}")
    for r in results_bl:
        print(f"{r['model']:<9}{r['mmtune']['tok_s']:>14.1f}{r['baseline']['tok_s']:>16.1f}{r['ratio']:>7.2f}x"
              f"{r['baseline']['padding_fraction']:>10.3f}{r['mmtune']['packing_utilisation']:>8.3f}"
              f"{r['mmtune']['rss']['peak_mib']:>12.0f}{r['baseline']['rss']['peak_mib']:>12.0f}"
              f"{'yes' if r['target_2x_met'] else 'no':>6}")
    for r in results_bl:
        print(f"RESULT model={r['model']} mmtune_tok_s={r['mmtune']['tok_s']:.1f} "
              f"baseline_tok_s={r['baseline']['tok_s']:.1f} ratio={r['ratio']:.2f}x "
              f"padding_fraction={r['baseline']['padding_fraction']:.3f} "
              f"utilisation={r['mmtune']['packing_utilisation']:.3f} "
              f"mmtune_peak_rss_mib={r['mmtune']['rss']['peak_mib']:.0f} "
              f"baseline_peak_rss_mib={r['baseline']['rss']['peak_mib']:.0f} "
              f"target_2x={'met' if r['target_2x_met'] else 'not_met'}")
    print(f"load average at end (1/5/15 min): {loadavg()}")
    print(f"total wall time: {total:.1f}s")
    if args.out:
        write_figures(args.out, {"total_wall_s": total, "torch_threads": torch.get_num_threads(), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
