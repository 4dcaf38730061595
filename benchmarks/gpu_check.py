#!/usr/bin/env python
"""GPU check: mmtune on one H100 / H200 in under 10 minutes, nothing downloaded; every section prints figures.

Models are random ``LlamaConfig``s of real sizes (a 1B class and a 7B class) with
SmolLM2's tokenizer (offline, ``smollm2-135m-instruct``), written once under
``--work``; the data is synthetic chat text (and the shipped ``mmtune-vision`` photos).
Sections, each a function below, each run through ``mmtune.train`` or mmtune's
objective as a user would:

1. ``packing``: bf16, flash-attention varlen packing (SDPA with the block mask if
   flash-attn is missing, said so): one packed batch's loss equals the same samples'
   loss one by one (bf16 tolerance).
2. ``throughput``: trained tokens/s and MFU of the 1B class at seq 4096, LoRA and full.
   MFU = tokens/s x FLOPs per token / the GPU's dense bf16 peak, FLOPs per token
   (PaLM's convention) 6N + 12 L d S for full fine-tuning and 4N + 12 L d S for LoRA
   (frozen weights get no weight gradient), N the matmul parameters (decoder + head).
3. ``qlora``: peak GPU memory of QLoRA on the 7B class (4-bit NF4, bitsandbytes).
4. ``distributed``: the DeepSpeed ZeRO-2 / ZeRO-3 and FSDP configs of ``configs/accelerate/`` train a few
   steps on 1 GPU, checkpoint, and resume (the launch commands: ``DISTRIBUTED_LAUNCH`` below).
5. ``llava``: a LLaVA-style tiny vision branch + the 1B class: tokens/s packed vs padded.
6. ``liger``: ``train.kernels: liger`` against none on the 1B LoRA run: tokens/s and peak memory (last: Liger's
   RoPE patch is process-wide).

``--tiny`` runs every section at toy sizes on the CPU (a 2-layer Llama, short rows, few
steps), skipping only what needs CUDA and saying so, so the script itself is proven.

Usage::

    bash benchmarks/gpu_check.sh                       # the full check (GPU)
    python benchmarks/gpu_check.py --tiny              # every section at toy sizes, CPU
    python benchmarks/gpu_check.py --sections packing throughput --out gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# =====================================================================================================
# DISTRIBUTED LAUNCH COMMANDS: the one place that says how a sharded run starts on 1 GPU.
# (Aligned with configs/accelerate/*.yaml as they are; a recipe key such as train.distributed
# replaces the --config_file here once it exists.) Each is followed by: RECIPE.yaml [overrides].
# =====================================================================================================
DISTRIBUTED_LAUNCH: dict[str, list[str]] = {
    name: [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / f"{name}.yaml"), "--num_processes", "1", "-m", "mmtune.cli", "train"]
    for name in ("zero2", "zero3", "fsdp")
}
DISTRIBUTED_NEEDS = {"zero2": "deepspeed", "zero3": "deepspeed", "fsdp": None}
"""The package each launch needs besides torch and accelerate."""
# =====================================================================================================

WORDS = ("the model reads every token of a long conversation and learns which answer follows which question "
         "packing puts several samples into one row so that no compute is spent on padding while each sample "
         "still sees only itself through the attention mask and its own positions starting at zero").split()


@dataclass(frozen=True)
class Sizes:
    """How big each section runs: the real check, or ``--tiny`` (CPU, seconds)."""

    llm: dict
    """The LlamaConfig of the "1B class" LLM."""
    big_llm: dict
    """The LlamaConfig of the "7B class" LLM (QLoRA)."""
    seq: int
    micro_batch: int
    steps: int
    small_llm: dict
    """The LLM of the distributed section: a few steps and two launches per config, so smaller."""
    llava_max_length: int


LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8)  # Llama 3.2 1B's shape (SmolLM2's 49k vocabulary: 1.07B parameters)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32)  # Llama 2 7B's shape
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

FULL = Sizes(llm=LLAMA_1B, big_llm=LLAMA_7B, seq=4096, micro_batch=4, steps=12,
             small_llm=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=16,
                            num_key_value_heads=8), llava_max_length=2048)
TOY = Sizes(llm=TINY, big_llm=TINY, seq=256, micro_batch=2, steps=4, small_llm=TINY, llava_max_length=512)


class Skipped(Exception):
    """A section that cannot run here (no CUDA, a missing package): said, not failed."""


@dataclass
class Context:
    sizes: Sizes
    work: Path
    cuda: bool
    tokenizer: object
    results: dict

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.cuda else "float32"

    @property
    def precision(self) -> str:
        return "bf16" if self.cuda else "no"


# --------------------------------------------------------------------------- building blocks


def build_llm(ctx: Context, name: str, arch: dict) -> Path:
    """A random Llama of ``arch`` with the tokenizer, written once under ``work`` (bf16 on GPU)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = ctx.work / f"llm-{name}"
    if (out / "config.json").is_file():
        return out
    tok = ctx.tokenizer
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=max(ctx.sizes.seq, 4096), tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **arch)
    torch.manual_seed(0)
    device = "cuda" if ctx.cuda else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16 if ctx.cuda else torch.float32)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    if ctx.cuda:
        torch.cuda.empty_cache()
    return out


def chat_jsonl(path: Path, n: int, words: tuple[int, int], seed: int = 0) -> Path:
    """``n`` ShareGPT conversations of random words, ``words`` (low, high) per answer."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = rng.randint(*words)
            q = " ".join(rng.choice(WORDS) for _ in range(max(4, k // 8)))
            a = " ".join(rng.choice(WORDS) for _ in range(k))
            fh.write(json.dumps({"id": f"s{i}", "conversations": [{"from": "human", "value": q},
                                                                  {"from": "gpt", "value": a}]}) + "\n")
    return path


def recipe(ctx: Context, llm: Path, run: str, *, data: dict, method: dict, train: dict | None = None,
           model: dict | None = None) -> dict:
    return {
        "output_dir": str(ctx.work / "runs" / run),
        "model": {"name": str(llm), "dtype": ctx.dtype, **(model or {})},
        "data": {"template": "auto", "val_fraction": 0.0, "cache_dir": str(ctx.work / "cache"), **data},
        "method": method,
        "train": {"max_steps": ctx.sizes.steps, "micro_batch_size": ctx.sizes.micro_batch, "lr": 1e-4,
                  "scheduler": "constant", "warmup_steps": 0, "mixed_precision": ctx.precision, "log_every": 1,
                  "report_to": [], "progress": False, **(train or {})},
    }


def train_figures(ctx: Context, rc: dict) -> dict:
    """Train ``rc``; trained tokens/s over the steps after the first two (warm-up), peak GPU memory."""
    import mmtune

    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = mmtune.train(rc)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "tokens_per_s" in r]
    timed = [r for r in records if r["step"] > 2] or records
    targets = sum(r["targets_seen"] - p["targets_seen"] for p, r in zip(records, records[1:]) if r in timed)
    seconds = sum((r["targets_seen"] - p["targets_seen"]) / r["tokens_per_s"]
                  for p, r in zip(records, records[1:]) if r in timed)
    out = {"steps": len(records), "tok_s": targets / seconds if seconds else float("nan"),
           "final_loss": result.final_loss,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None}
    if ctx.cuda:
        torch.cuda.empty_cache()
    return out


def matmul_params(arch: dict, vocab: int) -> int:
    """Parameters that are matmul weights per token: the decoder's linear layers and the output head."""
    d, f, L = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = d * arch["num_key_value_heads"] // arch["num_attention_heads"]
    return L * (2 * d * d + 2 * d * kv + 3 * d * f) + vocab * d


def mfu(ctx: Context, tok_s: float, *, lora: bool) -> float | None:
    from mmtune.training.metrics import peak_flops

    peak = peak_flops(torch.device("cuda")) if ctx.cuda else None
    if not peak:
        return None
    arch = ctx.sizes.llm
    n = matmul_params(arch, len(ctx.tokenizer))
    per_token = (4 if lora else 6) * n + 12 * arch["num_hidden_layers"] * arch["hidden_size"] * ctx.sizes.seq
    return tok_s * per_token / peak


def fmt(x, spec: str = ".1f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


# --------------------------------------------------------------------------- sections


def section_packing(ctx: Context) -> dict:
    """One packed batch's loss against its samples one by one: flash-attention varlen (or SDPA + block mask)."""
    from transformers import AutoModelForCausalLM

    from mmtune.data.packing import Collator, make_rows
    from mmtune.training.objective import CausalLMObjective

    flash = ctx.cuda and importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if flash else "sdpa"
    if ctx.cuda and not flash:
        print("   flash-attn is not installed: SDPA with mmtune's block-diagonal mask instead")
    llm = build_llm(ctx, "1b", ctx.sizes.llm)
    model = AutoModelForCausalLM.from_pretrained(str(llm), dtype=torch.bfloat16 if ctx.cuda else torch.float32,
                                                 attn_implementation=attn)
    model = model.to("cuda" if ctx.cuda else "cpu").eval()
    gen = torch.Generator().manual_seed(0)
    seq = ctx.sizes.seq
    lengths = [seq // 2, seq // 4, seq // 8, seq // 8 - 8, seq // 3, seq // 2 + 16, seq // 6]
    samples = []
    for n in lengths:
        ids = torch.randint(10, len(ctx.tokenizer) - 10, (n,), generator=gen).numpy()
        trained = (torch.arange(n) >= n // 4).numpy()  # the first quarter is the "prompt"
        samples.append((ids, trained))
    rows = make_rows(torch.tensor(lengths).numpy(), seq, True)
    collate = Collator(samples, pad_id=ctx.tokenizer.pad_token_id, block_mask=not flash)
    objective = CausalLMObjective(model)
    device = next(model.parameters()).device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=ctx.cuda):
        packed, n = objective(collate(rows).to(device))
        alone = sum(float(objective(collate([[i]]).to(device))[0]) for i in range(len(samples)))
    diff = abs(float(packed) - alone) / int(n)
    tol = 2e-2 if ctx.cuda else 1e-4  # bf16 (8 bits of mantissa) vs float32 rounding, per target
    del model, objective
    print(f"   {attn}: {len(samples)} samples in {len(rows)} rows, loss packed {float(packed) / int(n):.5f} vs alone "
          f"{alone / int(n):.5f}: {diff:.2e} nats per target ({'equal' if diff <= tol else 'DIFFERENT'} at {tol:.0e})")
    return {"attention": attn, "rows": len(rows), "samples": len(samples), "targets": int(n),
            "loss_packed": float(packed) / int(n), "loss_alone": alone / int(n), "abs_diff_per_target": diff,
            "tolerance": tol, "equal": diff <= tol}


def long_rows(ctx: Context) -> dict:
    """The ``data`` section of the throughput runs: every sample longer than a row (truncated to it), every token
    trained, so a row is one sample of exactly ``seq`` tokens and tokens/s and the attention FLOPs are exact."""
    path = ctx.work / "long.jsonl"
    if not path.is_file():
        chat_jsonl(path, ctx.sizes.steps * ctx.sizes.micro_batch + 4, (ctx.sizes.seq, ctx.sizes.seq + 64))
    return {"datasets": [{"path": str(path), "format": "sharegpt"}], "max_length": ctx.sizes.seq, "packing": True,
            "train_on_prompt": True, "num_workers": 2}


def section_throughput(ctx: Context) -> dict:
    """The 1B class at seq ``S``, LoRA and full: trained tokens/s, MFU, peak memory."""
    llm = build_llm(ctx, "1b", ctx.sizes.llm)
    data = long_rows(ctx)
    out = {}
    for method in ("lora", "full"):
        figures = train_figures(ctx, recipe(ctx, llm, f"throughput-{method}", data=data, method={"name": method}))
        figures["mfu"] = mfu(ctx, figures["tok_s"], lora=method == "lora")
        out[method] = figures
        print(f"   {method}: {figures['tok_s']:,.0f} trained tok/s, MFU {fmt(figures['mfu'], '.1%')}, "
              f"peak {fmt(figures['peak_gib'], '.1f')} GiB")
    return out


def section_qlora(ctx: Context) -> dict:
    """QLoRA on the 7B class: peak GPU memory of a few steps (gradient checkpointing on, as QLoRA is used)."""
    if not ctx.cuda:
        raise Skipped("QLoRA needs CUDA (4-bit NF4 through bitsandbytes)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skipped("bitsandbytes is not installed (pip install 'mmtune[gpu]')")
    llm = build_llm(ctx, "7b", ctx.sizes.big_llm)
    seq = min(ctx.sizes.seq, 2048)
    data = {"datasets": [{"path": str(chat_jsonl(ctx.work / "qlora.jsonl", 16, (seq, seq + 64))), "format": "sharegpt"}],
            "max_length": seq, "packing": True, "train_on_prompt": True, "num_workers": 2}
    figures = train_figures(ctx, recipe(ctx, llm, "qlora", data=data, method={"name": "qlora"},
                                        train={"max_steps": 4, "micro_batch_size": 1, "gradient_checkpointing": True}))
    figures["seq"] = seq
    print(f"   7B-class QLoRA, seq {seq}, 1 row: peak {figures['peak_gib']:.1f} GiB, {figures['tok_s']:,.0f} tok/s")
    return figures


def section_liger(ctx: Context) -> dict:
    """``train.kernels: liger`` against none, the 1B LoRA run of ``throughput``."""
    from mmtune.errors import ConfigError
    from mmtune.models.kernels import check_kernels

    try:
        check_kernels("liger", "cuda" if ctx.cuda else "cpu")
    except ConfigError as err:
        raise Skipped(str(err)) from None
    llm = build_llm(ctx, "1b", ctx.sizes.llm)
    data = long_rows(ctx)
    base = ctx.results.get("throughput", {}).get("lora") or train_figures(
        ctx, recipe(ctx, llm, "liger-none", data=data, method={"name": "lora"}))
    fused = train_figures(ctx, recipe(ctx, llm, "liger", data=data, method={"name": "lora"},
                                      train={"kernels": "liger"}))
    out = {"none": base, "liger": fused, "speedup": fused["tok_s"] / base["tok_s"],
           "memory_ratio": fused["peak_gib"] / base["peak_gib"]}
    print(f"   none: {base['tok_s']:,.0f} tok/s, {base['peak_gib']:.1f} GiB; liger: {fused['tok_s']:,.0f} tok/s, "
          f"{fused['peak_gib']:.1f} GiB ({out['speedup']:.2f}x speed, {out['memory_ratio']:.2f}x memory)")
    return out


def section_distributed(ctx: Context) -> dict:
    """Each accelerate config: 3 steps with a checkpoint at step 2, then a relaunch that resumes to step 4."""
    import yaml

    if not ctx.cuda:
        raise Skipped("DeepSpeed ZeRO and FSDP configs are for CUDA GPUs (NCCL)")
    llm = build_llm(ctx, "small", ctx.sizes.small_llm)
    data = {"datasets": [{"path": str(chat_jsonl(ctx.work / "dist.jsonl", 64, (100, 600))), "format": "sharegpt"}],
            "max_length": 1024, "packing": True, "num_workers": 1}
    out = {}
    for name, launch in DISTRIBUTED_LAUNCH.items():
        need = DISTRIBUTED_NEEDS[name]
        if need and importlib.util.find_spec(need) is None:
            out[name] = {"ok": False, "skipped": f"{need} is not installed"}
            print(f"   {name}: skipped, {need} is not installed")
            continue
        rc = recipe(ctx, llm, f"dist-{name}", data=data, method={"name": "full"},
                    train={"max_steps": 3, "save_every": 2, "micro_batch_size": 2})
        path = ctx.work / f"dist-{name}.yaml"
        path.write_text(yaml.safe_dump(rc))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        first = subprocess.run([*launch, str(path)], env=env, capture_output=True, text=True, timeout=240)
        second = None
        if first.returncode == 0:
            second = subprocess.run([*launch, str(path), "train.max_steps=4", "train.resume=auto"], env=env,
                                    capture_output=True, text=True, timeout=240)
        run = Path(rc["output_dir"])
        log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
        steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()] \
            if (run / "metrics.jsonl").is_file() else []
        ok = first.returncode == 0 and second is not None and second.returncode == 0 and \
            "resumed from" in log and steps[-1:] == [4] and (run / "final").is_dir()
        failed = first if first.returncode != 0 else second
        out[name] = {"ok": ok, "seconds": time.perf_counter() - t0, "steps_logged": steps,
                     "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("*")) if (run / "checkpoints").is_dir() else [],
                     "error": None if ok or failed is None else failed.stderr.strip().splitlines()[-1:]}
        print(f"   {name}: {'train, checkpoint and resume OK' if ok else 'FAILED'} "
              f"(steps logged {steps}, {out[name]['seconds']:.0f}s){'' if ok else ': ' + str(out[name]['error'])}")
    return out


def section_llava(ctx: Context) -> dict:
    """LLaVA-style: llava_tiny's random open_clip ViT + mlp2x_gelu in front of the 1B class, on the shipped photos;
    the same samples packed (rows of ``max_length``) and padded (one sample a row)."""
    import yaml

    llm = build_llm(ctx, "1b", ctx.sizes.llm)
    shipped = yaml.safe_load((REPO / "configs" / "llava_tiny.yaml").read_text())
    model = {"media": shipped["model"]["media"]}
    method = {"name": "lora", "media": shipped["method"]["media"]}
    out = {}
    for packing, mb in ((True, 2), (False, 16 if ctx.cuda else 8)):  # about as many samples a step
        data = {"datasets": [{"card": "mmtune-vision"}], "max_length": ctx.sizes.llava_max_length,
                "packing": packing, "num_workers": 2}
        name = "packed" if packing else "padded"
        out[name] = train_figures(ctx, recipe(ctx, llm, f"llava-{name}", data=data, method=method, model=model,
                                              train={"micro_batch_size": mb, "max_steps": ctx.sizes.steps + 2}))
        out[name]["micro_batch_size"] = mb
        print(f"   {name} ({mb} {'rows' if packing else 'samples'} a step): {out[name]['tok_s']:,.0f} trained tok/s, "
              f"peak {fmt(out[name]['peak_gib'], '.1f')} GiB")
    out["packed_over_padded"] = out["packed"]["tok_s"] / out["padded"]["tok_s"]
    print(f"   packed / padded: {out['packed_over_padded']:.2f}x")
    return out


SECTIONS = {
    "packing": section_packing,
    "throughput": section_throughput,
    "qlora": section_qlora,
    "distributed": section_distributed,
    "llava": section_llava,
    "liger": section_liger,  # last: Liger patches Llama's RoPE for the whole process
}


# --------------------------------------------------------------------------- main


def environment() -> dict:
    env = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    for pkg in ("transformers", "peft", "accelerate", "flash_attn", "liger_kernel", "bitsandbytes", "deepspeed"):
        spec = importlib.util.find_spec(pkg)
        env[pkg] = "missing" if spec is None else "installed"
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="every section at toy sizes on the CPU (CUDA-only ones skip)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--work", type=Path, default=None, help="keep models, data and runs here (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write every figure to this JSON file")
    p.add_argument("--budget-s", type=float, default=570,
                   help="start no section after this many seconds (said, not failed), so the whole stays in 10 min")
    args = p.parse_args(argv)

    from mmtune.models.aliases import resolve_alias
    from mmtune.models.loading import load_tokenizer
    from mmtune.config.schema import ModelConfig

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("no CUDA device: running the toy sizes on the CPU (as --tiny)")
    env = environment()
    print("mmtune GPU check:", ", ".join(f"{k} {v}" for k, v in env.items()))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmtune-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(ModelConfig(name=str(resolve_alias("smollm2-135m-instruct"))))
        ctx = Context(FULL if cuda else TOY, work, cuda, tokenizer, {})
        status = {}
        for name in args.sections:
            print(f"\n=== {name} ===", flush=True)
            t0 = time.perf_counter()
            if t0 - t_start > args.budget_s:
                status[name] = f"skipped: the time budget ({args.budget_s:.0f}s, --budget-s) is spent"
                print(f"   {status[name]}")
                continue
            try:
                ctx.results[name] = SECTIONS[name](ctx)
                status[name] = "ok"
            except Skipped as why:
                status[name] = f"skipped: {why}"
                print(f"   skipped: {why}")
            except Exception as exc:  # a section that breaks is reported; the others still run
                status[name] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                traceback.print_exc()
                print(f"   {status[name]}")
            print(f"   ({time.perf_counter() - t0:.0f}s)", flush=True)
    results = {k: v for k, v in ctx.results.items() if not k.startswith("_")}
    print("\n=== summary ===")
    for name in args.sections:
        print(f"{name:<12} {status[name]}")
    summary_lines(results)
    total = time.perf_counter() - t_start
    print(f"total wall time: {total:.0f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"env": env, "status": status, "results": results, "total_s": total},
                                       indent=2, default=str))
        print(f"wrote {args.out}")
    return 1 if any(s.startswith("FAILED") for s in status.values()) else 0


def summary_lines(results: dict) -> None:
    """One ``RESULT`` line per figure that has a target."""
    if "packing" in results:
        r = results["packing"]
        print(f"RESULT packing attention={r['attention']} packed_vs_alone={r['abs_diff_per_target']:.2e} "
              f"tolerance={r['tolerance']:.0e} equal={'yes' if r['equal'] else 'NO'}")
    for method, r in results.get("throughput", {}).items():
        target = "n/a" if r["mfu"] is None else ("met" if r["mfu"] >= 0.40 else "not_met")
        print(f"RESULT throughput method={method} tok_s={r['tok_s']:.0f} mfu={fmt(r['mfu'], '.3f')} "
              f"peak_gib={fmt(r['peak_gib'], '.1f')} target_mfu_40pct={target}")
    if "qlora" in results:
        print(f"RESULT qlora_7b peak_gib={results['qlora']['peak_gib']:.1f}")
    if "liger" in results:
        r = results["liger"]
        print(f"RESULT liger speedup={r['speedup']:.2f}x memory_ratio={r['memory_ratio']:.2f}")
    for name, r in results.get("distributed", {}).items():
        print(f"RESULT distributed config={name} ok={'yes' if r['ok'] else 'NO'}")
    if "llava" in results:
        print(f"RESULT llava packed_over_padded={results['llava']['packed_over_padded']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
