#!/usr/bin/env python
"""Demonstration: the tiny video, audio and audio-visual recipes learn from the stream; blanked controls do not.

No pretrained video or audio encoder exists offline, so the encoders train from scratch on tasks a CPU can
learn (``mmtune data synth``, seeded train and held-out splits of unseen clips):

- ``motion`` (``configs/video_llama_tiny.yaml``): which way a shape moves across 8 frames (4 answers);
- ``pitch`` (``configs/audio_tiny.yaml``): does a 2-s tone sweep rise or fall (2 answers);
- ``avsync`` (``configs/av_tiny.yaml``, frames and sound track of one file): is the beep on the bounce (2 answers).

Each task runs twice with the same data order, steps and learning rates: on the media, and on a copy with
the media blanked (grey frames; digital silence, accepted through ``model.media.audio.allow_silence``),
trained and evaluated that way, which is what the question alone gives. Held-out exact-match accuracy is
measured on the freshly built model and after training. Results accumulate in ``OUT/results.json`` and
``OUT/results.md``; this is a script that prints figures, not a test::

    python benchmarks/video_audio_demo.py --out runs/av-demo                         # every run
    python benchmarks/video_audio_demo.py --out runs/av-demo --runs motion motion-blank --steps 300

``--llm DIR --llm-method full`` swaps SmolLM2 for another LLM (``--llm tiny`` builds a random 2-layer Llama
with SmolLM2's tokenizer: fast, and it has nothing to recall, so only the media can move it above chance).
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

TASKS = {  # task -> (synth task, recipe, modality the blank removes)
    "motion": ("motion", "video_llama_tiny.yaml"),
    "pitch": ("pitch", "audio_tiny.yaml"),
    "avsync": ("av-sync", "av_tiny.yaml"),
}
RUNS = {name: (name, False) for name in TASKS} | {f"{name}-blank": (name, True) for name in TASKS} | {
    "motion-pool": ("motion", False), "motion-pool-blank": ("motion", True),
    "pitch-pool": ("pitch", False), "pitch-pool-blank": ("pitch", True),
    "motion-patch": ("motion", False), "motion-patch-blank": ("motion", True),
    "avsync-pool": ("avsync", False), "avsync-pool-blank": ("avsync", True)}
"""``*-pool``: the cheaper connector (Video-ChatGPT / LLaVA-NeXT-Video style) instead of the Q-Formers: each
frame's (or clip's) patch grid average-pooled, positions added, an MLP into the LLM per token. A Q-Former
trained from scratch starts by averaging over all its keys, which says nothing about a direction (a rising
and a falling sweep have the same average); pooled patches keep where and when. ``motion-patch``: every patch
of 4 frames, unpooled (the moving shape covers a few pixels of a 16 x 16 quadrant)."""


def make_data(out: Path, task: str, train: int, heldout: int, seed: int) -> None:
    from mmtune.datagen.synth import generate_synth

    if not (out / task / "synth.json").is_file():
        generate_synth(TASKS[task][0], out / task, train=train, heldout=heldout, seed=seed,
                       blank=out / f"{task}-blank", overwrite=True, progress=False)


def recipe_for(name: str, out: Path, args) -> dict:
    task, blank = RUNS[name]
    recipe = yaml.safe_load((REPO / "configs" / TASKS[task][1]).read_text())
    recipe["output_dir"] = str(out / "runs" / name)
    if args.llm:
        recipe["model"]["name"] = args.llm
    if args.llm_method:
        recipe["method"]["name"] = args.llm_method
    data = out / (f"{task}-blank" if blank else task)
    recipe["data"]["datasets"] = [{"card": str(data / "train.yaml")}]
    recipe["data"]["cache_dir"] = str(out / "cache")
    if name.startswith(("pitch-pool", "avsync-pool")):  # one 2-s clip, its 12 x 19 mel x time patches pooled 4 x 4
        audio = recipe["model"]["media"]["audio"]
        audio["encoder"]["select_feature"] = "patch"
        audio["clips"] = 1
        audio["pieces"] = {"pool": {"kind": "spatial_pool", "options": {"stride": 4, "grid": [12, 19]}},
                           "clip_position": audio["pieces"]["clip_position"]}
        audio["connector"] = {"kind": "mlp2x_gelu"}
    if name.startswith("avsync-pool"):  # and each frame's patches pooled 2 x 2 (16 frames x 4 tokens)
        video = recipe["model"]["media"]["video"]
        video["encoder"]["select_feature"] = "patch"
        video["pieces"] = {"pool": {"kind": "spatial_pool", "options": {"stride": 2}},
                           "frame_position": video["pieces"]["frame_position"]}
        video["connector"] = {"kind": "mlp2x_gelu"}
    elif name.startswith("motion-patch"):
        video = recipe["model"]["media"]["video"]
        video["encoder"]["select_feature"] = "patch"
        video["pieces"] = {"frame_position": video["pieces"]["frame_position"]}
        video["connector"] = {"kind": "mlp2x_gelu"}
        video["frames"] = video["train_frames"] = {"mode": "uniform", "num_frames": 4}
        recipe["method"]["media"]["video"]["pieces"] = {"frame_position": {"trainable": "full"}}
    elif name.startswith("motion-pool"):
        video = recipe["model"]["media"]["video"]
        video["encoder"]["select_feature"] = "patch"
        video["pieces"] = {"pool": {"kind": "spatial_pool", "options": {"stride": 2}},
                           "frame_position": video["pieces"]["frame_position"]}
        video["connector"] = {"kind": "mlp2x_gelu"}
        recipe["method"]["media"]["video"]["pieces"] = {"frame_position": {"trainable": "full"}}
    if blank and "audio" in recipe["model"]["media"]:
        recipe["model"]["media"]["audio"]["allow_silence"] = True
    recipe["train"].update(max_steps=args.steps, seed=args.seed, save_every=None, progress=False)
    if args.lr:
        recipe["train"]["lr"] = args.lr
    return recipe


def run_one(name: str, out: Path, args) -> dict:
    import mmtune
    from mmtune.models.run_outputs import load_for_inference

    task, blank = RUNS[name]
    recipe = recipe_for(name, out, args)
    data_dir = out / (f"{task}-blank" if blank else task)
    model, tok = untrained_model(recipe)
    before = held_out_accuracy(model, tok, data_dir)["overall"]
    del model
    start = time.time()
    result = mmtune.train(recipe)
    seconds = time.time() - start
    model, tok = load_for_inference(str(result.run_dir))
    after = held_out_accuracy(model, tok, data_dir)["overall"]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    return {"before": before, "after": after, "train_seconds": round(seconds, 1), "steps": args.steps,
            "final_loss": summary.get("final_loss"), "llm": recipe["model"]["name"], "task": task}


def table(results: dict) -> str:
    lines = ["| run | LLM | steps | held-out before | held-out after | chance | question-only | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["runs"].items():
        c = results["chance"].get(r["task"], {})
        lines.append(f"| {name} | {Path(r['llm']).name} | {r['steps']} | {r['before']:.3f} | {r['after']:.3f} | "
                     f"{c.get('overall', float('nan')):.3f} | {c.get('question_only', float('nan')):.3f} | "
                     f"{r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def chance(data_dir: Path) -> dict:
    stats = json.loads((data_dir / "synth.json").read_text())
    q_only = stats.get("question_only")
    return {"overall": stats["chance"]["overall"],
            "question_only": q_only.get("overall") if isinstance(q_only, dict) else q_only}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/av-demo"))
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    p.add_argument("--train", type=int, default=800, help="training clips per task (default 800)")
    p.add_argument("--heldout", type=int, default=200, help="held-out clips per task (default 200)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--llm", default=None, help="another LLM than the recipes' SmolLM2 ('tiny': a random tiny Llama)")
    p.add_argument("--llm-method", choices=["lora", "full", "frozen"], default=None,
                   help="how the LLM trains (default: the recipe's LoRA; a random --llm needs full)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the recipe's)")
    args = p.parse_args()

    out = args.out.resolve()
    if args.llm == "tiny":
        from common import llm_dir

        args.llm = str(llm_dir("tiny", out))
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}, "chance": {}}
    for name in args.runs:
        task = RUNS[name][0]
        make_data(out, task, args.train, args.heldout, args.seed)
        results["chance"][task] = chance(out / task)
        print(f"== {name}", flush=True)
        key = name if args.llm is None else f"{name} ({Path(args.llm).name})"
        results["runs"][key] = run_one(name, out, args)
        print(json.dumps(results["runs"][key]), flush=True)
        results_file.write_text(json.dumps(results, indent=2))
        (out / "results.md").write_text(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
