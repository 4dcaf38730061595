"""Demonstration: SmolLM2-135M before and after PAM self-correction tuning, on arithmetic word problems.

Steps (each resumable / skipped when its output exists):
  1. generate problems: datasets/arithmetic/questions_train.jsonl and heldout.jsonl (seeded, exact answers);
  2. build self_correction rows from SmolLM2's own sampled answers (mmtune data selfcorrect's API) into
     selfcorrect_smollm2_all.jsonl, and the training rows (by default balanced) into selfcorrect_smollm2.jsonl;
  3. LoRA-tune with partial answer masking: configs/smollm2_pam.yaml;
  4. evaluate the untuned and the tuned model on the held-out problems with the same scaffold
     (mmtune.datagen.self_correction_eval) and write benchmarks/self_correction/results-TAG.json + RESULTS.md.

    PYTHONPATH=. python scripts/demo_self_correction.py                      # balanced rows (default)
    PYTHONPATH=. python scripts/demo_self_correction.py --no-balance --tag imbalanced --train-questions 40 --samples 1

Figures are measured, never typed in: RESULTS.md is written from the results-*.json files by this script.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "datasets" / "arithmetic"
RESULTS = REPO / "benchmarks" / "self_correction"
SYSTEM = None
"""No system instruction: SmolLM2-135M answers these problems worse when told to be brief (measured: 1 of 32
sampled answers right with a "one line, then 'The answer is N.'" instruction, 8 of 32 greedy without)."""
ANSWER_TOKENS = 40
"""Initial answers are cut at this many tokens, in the data and in the evaluation alike: CPU generation is the
cost of this demo, and the scaffold then asks every model to verify right after its (possibly cut) answer."""


def make_problems(n_train: int, n_heldout: int) -> None:
    for name, n, seed, prefix in (("questions_train", n_train, 1, "train"), ("heldout", n_heldout, 2, "heldout")):
        path = DATA / f"{name}.jsonl"
        if not path.is_file():
            subprocess.run([sys.executable, str(REPO / "scripts" / "make_arithmetic_problems.py"), "--n", str(n),
                            "--seed", str(seed), "--out", str(path), "--id-prefix", prefix], check=True)


def accuracy_eval(model_name: str, rows: list[dict], batch_size: int):
    """Self-correction scores of one model. The one place to swap in another evaluator."""
    from mmtune.evaluation import numeric_match
    from mmtune.datagen.self_correction_eval import evaluate_self_correction
    from mmtune.models.run_outputs import load_for_inference

    model, tokenizer = load_for_inference(model_name)
    return evaluate_self_correction(model, tokenizer, rows, numeric_match, system=SYSTEM, batch_size=batch_size,
                                    max_new_tokens=ANSWER_TOKENS, verify_tokens=12, revise_tokens=32)


def balanced(rows: list[dict], seed: int) -> list[dict]:
    """As many incorrect as correct rows (all of the rarer kind): a model trained on mostly-wrong answers
    learns to answer "No" always, which looks like perfect verification on a weak model's answers."""
    rng = random.Random(seed)
    right = [r for r in rows if r["correct"]]
    wrong = [r for r in rows if not r["correct"]]
    k = min(len(right), len(wrong))
    return sorted(rng.sample(right, k) + rng.sample(wrong, k), key=lambda r: (r["id"], r["sample"]))


def write_markdown() -> None:
    """RESULTS.md from every results-*.json in RESULTS (one section per run)."""

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.1f}%"

    lines = [
        "# Self-correction with partial answer masking: SmolLM2-135M-Instruct",
        "",
        "Written by `scripts/demo_self_correction.py` from the `results-*.json` files beside it (measured on a "
        "shared 2-core CPU). `verification right`: the model's Yes/No matches the numeric judge of its initial "
        "answer (no readable verdict counts as wrong); `n/a`: no such case.",
    ]
    for path in sorted(RESULTS.glob("results-*.json")):
        results = json.loads(path.read_text())
        build = results["data"]
        lines += [
            "",
            f"## Run `{results['tag']}`",
            "",
            f"Builder output: {build['rows']} self_correction rows from the model's own sampled answers "
            f"(temperature {build['temperature']}, {build['samples_per_question']} per question) to "
            f"{build['questions']} generated arithmetic word problems: {build['correct']} judged correct, "
            f"{build['incorrect']} incorrect -> revised with the worked solution. Trained on "
            f"{build['training_rows']} of them ({'balanced: as many incorrect as correct' if build['balance'] else 'all'}), "
            f"LoRA recipe `configs/smollm2_pam.yaml` ({results['train']['steps']} steps, "
            f"{results['train']['seconds']:.0f} s, final loss {results['train']['final_loss']:.3f}). Evaluation: "
            f"{results['heldout']} held-out problems, greedy, the same scaffold for both models: answer (at most "
            f"{results['answer_tokens']} tokens, as in the data); the verification marker prefilled if the model "
            "does not verify by itself; the revision marker prefilled after a bare `No`.",
            "",
            "| model | initial answer accuracy | final accuracy (after self-verification) | verification right "
            "| says Yes when right | says No when wrong | verifies unprompted |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in ("base", "pam"):
            s = results[name]
            lines.append(f"| {name} | {pct(s['initial_accuracy'])} | {pct(s['final_accuracy'])} | "
                         f"{pct(s['verification_accuracy'])} | {pct(s['says_yes_when_right'])} | "
                         f"{pct(s['says_no_when_wrong'])} | {pct(s['unprompted_verification'])} |")
    (RESULTS / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-questions", type=int, default=120)
    p.add_argument("--samples", type=int, default=2, help="answers sampled per training question")
    p.add_argument("--heldout", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--no-balance", dest="balance", action="store_false",
                   help="train on every built row instead of as many incorrect as correct ones")
    p.add_argument("--tag", default="balanced", help="names the run directory and the results file")
    args = p.parse_args()

    import mmtune
    from mmtune.config.loader import load_recipe
    from mmtune.datagen.self_correction import QuestionFields, build_self_correction
    from mmtune.evaluation import numeric_match

    make_problems(args.train_questions, args.heldout)
    all_rows = DATA / "selfcorrect_smollm2_all.jsonl"
    build_self_correction(DATA / "questions_train.jsonl", all_rows, judge=numeric_match,
                          fields=QuestionFields(revision="solution"), system=SYSTEM, batch_size=args.batch_size,
                          samples_per_question=args.samples, max_new_tokens=ANSWER_TOKENS,
                          temperature=args.temperature, seed=0)
    built = [json.loads(line) for line in all_rows.read_text().splitlines()]
    training = balanced(built, seed=0) if args.balance else built
    with open(DATA / "selfcorrect_smollm2.jsonl", "w", encoding="utf-8") as fh:  # the card's file
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in training)
    data = {"questions": args.train_questions, "samples_per_question": args.samples, "rows": len(built),
            "temperature": args.temperature, "correct": sum(r["correct"] for r in built),
            "incorrect": sum(not r["correct"] for r in built), "balance": args.balance,
            "training_rows": len(training)}
    print("data:", data, flush=True)

    recipe = load_recipe(REPO / "configs" / "smollm2_pam.yaml",
                         [f"output_dir={REPO / 'runs' / f'smollm2-pam-{args.tag}'}", "train.progress=false"])
    start = time.perf_counter()
    if not (Path(recipe.output_dir) / "final").is_dir():
        result = mmtune.train(recipe)
        train = {"steps": result.steps, "final_loss": result.final_loss}
    else:
        train = json.loads((Path(recipe.output_dir) / "summary.json").read_text())
        train = {"steps": train["steps"], "final_loss": train["final_loss"]}
    train["seconds"] = time.perf_counter() - start
    print("train:", train, flush=True)

    heldout = [json.loads(line) for line in (DATA / "heldout.jsonl").read_text().splitlines()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {"tag": args.tag, "data": data, "train": train, "heldout": len(heldout), "system": SYSTEM,
               "answer_tokens": ANSWER_TOKENS}
    for name, model in (("base", "smollm2-135m-instruct"), ("pam", recipe.output_dir)):
        scores = accuracy_eval(model, heldout, args.batch_size)
        results[name] = scores.summary()
        results[f"{name}_examples"] = [vars(a) for a in scores.attempts[:8]]
        print(name, scores.summary(), flush=True)
    (RESULTS / f"results-{args.tag}.json").write_text(json.dumps(results, indent=2))
    write_markdown()
    print((RESULTS / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
