#!/usr/bin/env python
"""Demonstration: the tiny InstructBLIP recipe learns from the pixels, and a media-blanked control does not.

No pretrained image encoder exists offline, so the encoder trains from scratch on a task it can learn on a
CPU: ``mmtune data synth shapes`` (coloured shapes; questions about colour, shape, count and position, with
a held-out split of unseen images). Runs, all from ``configs/instructblip_tiny.yaml`` with the same data
order, steps and learning rates:

- ``qformer``: the recipe as shipped (instruction-aware Q-Former, 8 queries);
- ``mlp``: LLaVA's ``mlp2x_gelu`` connector on the same encoder (every patch feature becomes an LLM token);
- ``qformer-blank``: the ``qformer`` run on the same questions with every image replaced by grey, trained and
  evaluated that way: what the model can reach from the question alone. It should stay near chance
  (``synth.json``'s majority-answer and question-only figures); the gap to ``qformer`` is what the pixels give;
- ``pick-aware`` / ``pick-blip2``: the instruction-aware ablation on ``shapes-pick`` (four objects of four
  colours and four shapes in every image; the question picks one), with only 4 queries: InstructBLIP's
  Q-Former reads the question before it looks at the image, BLIP-2's does not, at equal steps.

Held-out exact-match accuracy per question type is measured before training (the freshly built model)
and after, by ``mmtune.evaluation.evaluate`` (greedy, short answers). Results go to
``OUT/results.json`` and a Markdown table ``OUT/results.md``; this is a script that prints figures, not a
test::

    python benchmarks/instructblip_pixels_demo.py --out runs/pixels-demo             # all runs
    python benchmarks/instructblip_pixels_demo.py --out runs/pixels-demo --runs qformer qformer-blank

Runs already in ``OUT/results.json`` are kept, so runs can be added one invocation at a time. ``--llm`` and
``--llm-method`` swap the LLM (a random tiny Llama needs ``full``), ``--objects 1`` makes ``shapes`` single-object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import held_out_accuracy, untrained_model  # noqa: E402

RECIPE = REPO / "configs" / "instructblip_tiny.yaml"

RUNS = {
    "qformer": {"data": "shapes", "connector": None},
    "mlp": {"data": "shapes", "connector": {"kind": "mlp2x_gelu"}},
    "qformer-blank": {"data": "shapes-blank", "connector": None},
    "pick-aware": {"data": "pick", "queries": 4, "aware": True},
    "pick-blip2": {"data": "pick", "queries": 4, "aware": False},
}


def make_data(out: Path, train: int, heldout: int, seed: int, objects: str) -> None:
    from mmtune.datagen.synth import generate_synth

    if not (out / "shapes" / "synth.json").is_file():
        generate_synth("shapes", out / "shapes", train=train, heldout=heldout, seed=seed, blank=out / "shapes-blank",
                       overwrite=True, progress=False, objects=objects)
    if not (out / "pick" / "synth.json").is_file():
        generate_synth("shapes-pick", out / "pick", train=train, heldout=heldout, seed=seed, overwrite=True,
                       progress=False)


def recipe_for(name: str, out: Path, args) -> dict:
    """configs/instructblip_tiny.yaml with this run's data, connector and length."""
    recipe = yaml.safe_load(RECIPE.read_text())
    run = RUNS[name]
    recipe["output_dir"] = str(out / "runs" / name)
    if args.llm:
        recipe["model"]["name"] = args.llm
    if args.llm_method:
        recipe["method"]["name"] = args.llm_method
    recipe["data"]["datasets"] = [{"card": str(out / run["data"] / "train.yaml")}]
    image = recipe["model"]["media"]["image"]
    if run.get("connector"):
        image["connector"] = run["connector"]
        image["encoder"]["select_feature"] = "patch"  # LLaVA: patch features only (64 LLM tokens per image)
    if "queries" in run:
        options = image["connector"]["options"]
        options["num_query_tokens"] = run["queries"]
        options["instruction_aware"] = run["aware"]
        if not run["aware"]:
            options.pop("tokenizer")
    recipe["train"].update(max_steps=args.steps, seed=args.seed, save_every=None, progress=False)
    if args.lr:
        recipe["train"]["lr"] = args.lr
    return recipe


def run_one(name: str, out: Path, args) -> dict:
    import mmtune
    from mmtune.models.run_outputs import load_for_inference

    recipe = recipe_for(name, out, args)
    data_dir = out / RUNS[name]["data"]
    model, tok = untrained_model(recipe)
    before = held_out_accuracy(model, tok, data_dir, "question_type")
    del model
    start = time.time()
    result = mmtune.train(recipe)
    seconds = time.time() - start
    model, tok = load_for_inference(str(result.run_dir))
    after = held_out_accuracy(model, tok, data_dir, "question_type")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {"before": before, "after": after, "train_seconds": round(seconds, 1), "steps": args.steps,
            "final_loss": summary.get("final_loss"),
            "image_tokens": model.branches["image"].num_tokens}


def chance(data_dir: Path) -> dict:
    stats = json.loads((data_dir / "synth.json").read_text())
    return {"majority": stats["chance"], "question_only": stats.get("question_only")}


def table(results: dict, out: Path) -> str:
    types = ["overall", "color", "shape", "count", "position"]
    lines = ["| run | image tokens | " + " | ".join(f"{t} before -> after" for t in types) + " | train s |",
             "|---|---|" + "---|" * len(types) + "---|"]
    for name, r in results["runs"].items():
        cells = [f"{r['before'].get(t, float('nan')):.3f} -> {r['after'].get(t, float('nan')):.3f}" if t in r["after"]
                 else "-" for t in types]
        lines.append(f"| {name} | {r['image_tokens']} | " + " | ".join(cells) + f" | {r['train_seconds']} |")
    lines.append("")
    for data, c in results["chance"].items():
        lines.append(f"- `{data}` held-out chance (majority answer): {json.dumps(c['majority'])}; "
                     f"question-only baseline: {json.dumps(c['question_only'])}")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/pixels-demo"))
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    p.add_argument("--train", type=int, default=2000, help="training images per task (default 2000)")
    p.add_argument("--heldout", type=int, default=300, help="held-out images per task (default 300)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objects", default="1-3", help="objects per `shapes` image, K or MIN-MAX (default 1-3)")
    p.add_argument("--llm", default=None, help="another LLM than the recipe's SmolLM2 (a directory or hub name)")
    p.add_argument("--llm-method", choices=["lora", "full", "frozen"], default=None,
                   help="how the LLM trains (default: the recipe's LoRA; a random --llm needs full)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out.resolve()
    make_data(out, args.train, args.heldout, args.seed, args.objects)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}}
    results["chance"] = {d: chance(out / d) for d in ("shapes", "pick")}
    for name in args.runs:
        print(f"== {name}", flush=True)
        results["runs"][name] = run_one(name, out, args)
        print(json.dumps(results["runs"][name]), flush=True)
        results_file.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table(results, out))
    print(table(results, out))


if __name__ == "__main__":
    main()
