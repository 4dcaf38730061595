"""Sequential tuning on CPU: the forgetting it causes, and how much replay of earlier data prevents.

Runs ``configs/sequential_smollm2.yaml`` (general instructions -> bare arithmetic -> arithmetic word problems
with units; LoRA on ``smollm2-135m-instruct``) twice, from the same first stage:

- ``no-replay``: every later stage trains on its own data only;
- ``replay``: stages 2 and 3 draw ``--replay`` of their samples from the earlier stages' training data.

Each run writes its forgetting report (``forgetting.json`` / ``.md``: every stage's model on every earlier
stage's held-out set and on the general set, ``mmtune-instruct-last40``). This script prints both tables
and, per held-out set, the forgetting: how much worse the last stage's model is than the model right
after that set's own stage (answer loss: higher is worse; exact match: lower is worse), without and with
replay, measured in this one run. Figures: ``OUT/forgetting_demo.json``.

    python benchmarks/forgetting_demo.py                                  # ~10 minutes on 2 idle cores
    python benchmarks/forgetting_demo.py --steps 8 --samples 12           # a small check, ~3 minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmtune.config.stages import load_stages
from mmtune.sequential import run_stages

RECIPE = REPO / "configs" / "sequential_smollm2.yaml"


def forgetting(report: dict, metric: str) -> dict[str, float]:
    """Per set: the last stage's figure minus the figure right after the set was first evaluated."""
    table, last = report["tables"][metric], report["stages"][-1]
    out = {}
    for name in report["sets"]:
        first = next(table[stage][name] for stage in report["stages"] if table[stage][name] is not None)
        out[name] = table[last][name] - first
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/forgetting-demo"))
    parser.add_argument("--replay", type=float, default=0.2, help="replay fraction of stages 2 and 3")
    parser.add_argument("--steps", type=int, help="optimizer steps per stage (default: the recipe's)")
    parser.add_argument("--samples", type=int, help="samples evaluated per held-out set (default: the recipe's)")
    args = parser.parse_args()

    common = [f"train.max_steps={args.steps}"] if args.steps else []
    common += [f"forgetting.max_samples={args.samples}"] if args.samples else []
    common += ["train.tensorboard=false", "train.progress=false"]
    reports, seconds = {}, {}
    for name, replay in (("no-replay", 0.0), ("replay", args.replay)):
        out = args.out / name
        plan = load_stages(RECIPE, [*common, f"output_dir={out}", f"stages.1.replay={replay}",
                                    f"stages.2.replay={replay}"])
        first = plan.stages[0].settings.name
        shared = args.out / "no-replay" / first
        if name != "no-replay" and (shared / "final").is_dir() and not (out / first).exists():
            shutil.copytree(shared, out / first, ignore=shutil.ignore_patterns("checkpoints"))  # the same stage 1
        start = time.perf_counter()
        result = run_stages(plan)
        seconds[name] = time.perf_counter() - start
        reports[name] = json.loads(result.report.read_text())
        print(f"\n== {name} (replay {replay}) ==\n" + (out / "forgetting.md").read_text())

    summary = {"replay_fraction": args.replay, "seconds": seconds, "reports": reports, "forgetting": {}}
    print("forgetting = (last stage) - (right after the set's own stage); loss: + is worse, exact: - is worse")
    print(f"{'metric':<7} {'set':<24} {'no replay':>10} {'replay':>10} {'ratio':>7}")
    for metric in reports["no-replay"]["tables"]:
        without, with_replay = forgetting(reports["no-replay"], metric), forgetting(reports["replay"], metric)
        summary["forgetting"][metric] = {"no-replay": without, "replay": with_replay}
        for name in without:
            ratio = with_replay[name] / without[name] if without[name] else float("nan")
            print(f"{metric:<7} {name:<24} {without[name]:>10.3f} {with_replay[name]:>10.3f} {ratio:>7.2f}")
    print(f"time: no-replay {seconds['no-replay']:.0f} s (all 3 stages), replay {seconds['replay']:.0f} s "
          "(stages 2 and 3; stage 1 shared)")
    (args.out / "forgetting_demo.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
