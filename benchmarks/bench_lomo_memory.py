"""LOMO's memory: peak RSS and steps/s of full tuning with AdamW vs LOMO (vs AdaLomo) vs LoRA, same data and steps.

A script that prints figures; it is not a test. Each method trains SmolLM2-135M-Instruct (the offline alias
``smollm2-135m-instruct``) through ``mmtune.train`` in its own Python process, so each peak resident set is
its own: on CPU, fp32, the same recipe but for ``method`` and ``train.lr``, the same packed rows in the same
order, the same number of steps. Printed: peak RSS (the whole run, and up to the last training step, i.e.
before ``final/`` is written), steps/s (step 1 left out: it holds the warm-up), the loss of every step side by
side, and the ratio LOMO / AdamW of the training peaks (target: <= 0.6). ``--plot`` also draws the loss curves.

    python benchmarks/bench_lomo_memory.py                         # 8 steps of 256-token rows, 2 rows a step
    python benchmarks/bench_lomo_memory.py --steps 30 --max-length 512 --methods adamw,lomo,adalomo,lora
    python benchmarks/bench_lomo_memory.py --model tiny --steps 3  # the tests' tiny Llama: seconds

Expected memory (fp32, P parameters): AdamW full holds weights, gradients and two moments (16 P bytes);
LOMO the weights and one parameter's gradient at a time (4 P bytes); LoRA the frozen weights and a small
adapter. Activations and the runtime come on top of each, equally.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import llm_dir, loadavg, mmtune_throughput, write_figures  # noqa: E402

METHODS = {
    "adamw": {"method": {"name": "full"}, "lr": 2e-5},
    "lomo": {"method": {"name": "lomo", "lomo": {"optimizer": "lomo"}}, "lr": 1e-2},
    "adalomo": {"method": {"name": "lomo", "lomo": {"optimizer": "adalomo"}}, "lr": 5e-4},
    "lora": {"method": {"name": "lora"}, "lr": 5e-4},
}
"""Each side: its ``method`` section and a learning rate usual for it (``--lr NAME=VALUE`` changes it)."""


def peak_rss_mib() -> float:
    """This process's high-water mark since it started (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Restart the kernel's high-water mark (VmHWM) from the current RSS; Linux only (False elsewhere)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def status_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (the high-water mark since the last reset) from /proc/self/status, in MiB."""
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def recipe_for(plan: dict, name: str) -> dict:
    side = METHODS[name]
    return {
        "output_dir": str(Path(plan["work"]) / f"run-{name}"),
        "model": {"name": plan["model_dir"], "dtype": "float32"},
        "data": {"datasets": [{"card": "mmtune-instruct"}], "max_length": plan["max_length"], "packing": True,
                 "cache_dir": str(Path(plan["work"]) / "cache"), "num_workers": 0},
        "method": side["method"],
        "train": {"seed": 42, "max_steps": plan["steps"], "micro_batch_size": plan["micro_batch_size"],
                  "grad_accum_steps": 1, "lr": plan["lr"][name], "scheduler": "constant", "warmup_steps": 0,
                  "max_grad_norm": 1.0, "mixed_precision": "no", "gradient_checkpointing": plan["checkpointing"],
                  "log_every": 1, "tensorboard": False, "progress": False},
    }


def run_one(plan: dict, name: str) -> dict:
    """In the side's own process: train, and read the peaks of setting up (loading the model, tokenizing), of
    training (from the end of the task's setup to the start of writing ``final/``) and of the whole run."""
    import mmtune
    from mmtune.training.tasks import TASKS

    marks = {}
    sft = TASKS["sft"]

    class MarkPhases:
        """The SFT task, with the peak RSS read when its setup ends and when training ends (writing ``final/``
        copies the weights, so it is a phase of its own)."""

        def setup(self, recipe, runtime):
            run = sft.setup(recipe, runtime)
            gc.collect()
            marks["setup_peak_mib"], marks["after_setup_mib"] = peak_rss_mib(), status_mib("VmRSS")
            resettable = reset_peak()
            write = run.save_final

            def save_final(target, model):
                marks["training_peak_mib"] = status_mib("VmHWM") if resettable else peak_rss_mib()
                write(target, model)

            run.save_final = save_final
            return run

    TASKS["sft"] = MarkPhases()
    t0 = time.perf_counter()
    result = mmtune.train(recipe_for(plan, name))
    wall = time.perf_counter() - t0
    speed = mmtune_throughput(result.run_dir)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "method": name,
        "lr": plan["lr"][name],
        **marks,
        "run_peak_mib": peak_rss_mib(),
        "steps": speed["steps"],
        "steps_per_s": speed["timed_steps"] / speed["seconds_timed"] if speed["seconds_timed"] else float("nan"),
        "tok_s": speed["tok_s"],
        "losses": [r["loss"] for r in sorted((r for r in records if "loss" in r), key=lambda r: r["step"])],
        "wall_s": wall,
    }


def run_side(script: Path, work: Path, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(script), "--side", name, "--work", str(work)], env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the {name} side failed (exit {proc.returncode}); its log is above")
    return json.loads((work / f"result-{name}.json").read_text())


def report(plan: dict, results: dict[str, dict]) -> dict:
    base = results.get("adamw")
    print("\npeak RSS in MiB: setup (model loaded, data tokenized), training (setup's end to final/), whole run")
    print(f"{'method':<9}{'lr':>9}{'after setup':>12}{'setup peak':>11}{'train peak':>11}{'run peak':>9}"
          f"{'train x AdamW':>14}{'run x AdamW':>12}{'steps/s':>9}{'tok/s':>8}{'final loss':>11}")
    for name, r in results.items():
        train_x = r["training_peak_mib"] / base["training_peak_mib"] if base else float("nan")
        run_x = r["run_peak_mib"] / base["run_peak_mib"] if base else float("nan")
        print(f"{name:<9}{r['lr']:>9.0e}{r['after_setup_mib']:>12.0f}{r['setup_peak_mib']:>11.0f}"
              f"{r['training_peak_mib']:>11.0f}{r['run_peak_mib']:>9.0f}{train_x:>14.2f}{run_x:>12.2f}"
              f"{r['steps_per_s']:>9.3f}{r['tok_s']:>8.0f}{r['losses'][-1]:>11.4f}")
    print("\nloss per step")
    print(f"{'step':>5}" + "".join(f"{name:>10}" for name in results))
    for step in range(plan["steps"]):
        print(f"{step + 1:>5}" + "".join(f"{r['losses'][step]:>10.4f}" for r in results.values()))
    figures = {"plan": plan, "results": results}
    if base and "lomo" in results:
        lomo = results["lomo"]
        ratio = lomo["training_peak_mib"] / base["training_peak_mib"]
        run_ratio = lomo["run_peak_mib"] / base["run_peak_mib"]
        speed = lomo["steps_per_s"] / base["steps_per_s"]
        figures.update(lomo_over_adamw_training_peak=ratio, lomo_over_adamw_run_peak=run_ratio,
                       lomo_over_adamw_steps_per_s=speed)
        print(f"\nRESULT model={plan['model']} training peak: lomo {lomo['training_peak_mib']:.0f} MiB, adamw "
              f"{base['training_peak_mib']:.0f} MiB, ratio={ratio:.2f} (target <= 0.6: "
              f"{'met' if ratio <= 0.6 else 'not met'}); whole run: ratio={run_ratio:.2f} "
              f"({'met' if run_ratio <= 0.6 else 'not met'}); steps/s lomo / adamw = {speed:.2f}")
    return figures


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=f"{name} ({r['training_peak_mib']:.0f} MiB)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--methods", default="adamw,lomo,lora", help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256, help="packed row length in tokens")
    p.add_argument("--micro-batch-size", type=int, default=2, help="rows per step")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations in backward on every side (as configs/smollm2_full.yaml does)")
    p.add_argument("--lr", action="append", default=[], metavar="NAME=VALUE", help="a side's learning rate")
    p.add_argument("--plot", type=Path, default=None, help="also draw the loss curves into this PNG")
    p.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it")
    p.add_argument("--side", help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.side:  # one method, in its own process
        plan = json.loads((args.work / "plan.json").read_text())
        result = run_one(plan, args.side)
        (args.work / f"result-{args.side}.json").write_text(json.dumps(result))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    lrs = {name: side["lr"] for name, side in METHODS.items()}
    for item in args.lr:
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            raise SystemExit(f"--lr {item}: expected NAME=VALUE with NAME one of {', '.join(METHODS)}")
        lrs[name] = float(value)
    t_start = time.perf_counter()
    print(f"LOMO memory benchmark: {args.model}, {args.steps} steps of {args.micro_batch_size} x {args.max_length}-token "
          f"rows, fp32 on CPU, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; load average at start {loadavg()} (busy machines skew steps/s, not memory)")
    with tempfile.TemporaryDirectory(prefix="mmtune-lomo-bench-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        plan = {"model": args.model, "model_dir": str(llm_dir(args.model, work)), "work": str(work),
                "steps": args.steps, "max_length": args.max_length, "micro_batch_size": args.micro_batch_size,
                "checkpointing": args.gradient_checkpointing, "lr": lrs}
        (work / "plan.json").write_text(json.dumps(plan))
        results = {}
        for name in methods:
            print(f"-- {name} (subprocess) ...", flush=True)
            results[name] = run_side(Path(__file__).resolve(), work, name)
            print(f"   done: peak {results[name]['training_peak_mib']:.0f} MiB, "
                  f"{results[name]['steps_per_s']:.3f} steps/s", flush=True)
        figures = report(plan, results)
        if args.plot:
            plot(results, args.plot)
    total = time.perf_counter() - t_start
    print(f"load average at end: {loadavg()}; total wall time {total:.1f}s")
    if args.out:
        write_figures(args.out, {"total_wall_s": total, **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
