"""HINT on CPU: unseen tasks from their instruction alone, with the instruction in the prompt or turned into adapters.

Trains four variants of ``configs/hint_smollm2.yaml`` for the same steps and samples per step on the 30
training tasks of ``mmtune-hint-tasks`` (smollm2-135m-instruct, LoRA r8 on the LLM in every variant):

- ``plain``: plain instruction tuning (``task: sft``), the instruction before every input;
- ``hint``: ``task: hint``, the instruction read once by the hypernetwork, not in the prompt;
- ``hint_fusion``: ``task: hint`` with ``hint.fusion: true`` (the instruction in the prompt as well);
- ``no_instruction``: ``task: sft`` with the instruction left out: the floor.

Then, for each: exact match (greedy) on the 10 held-out tasks (24 instances each) and on fresh instances of
the 30 training tasks; and the inference cost per instance for a ~300-token instruction (the held-out task's
definition plus as many positive examples as fit): measured wall time of greedy decoding at batch size 1 and
forward FLOPs counted as 2 x non-embedding parameters x tokens processed. HINT's one-time cost (encoding the
instruction, generating the adapters) is reported apart; its per-instance cost is measured with the adapters
written by ``mmtune hint adapt`` and merged, as it would be deployed. One held-out task's replies are also
checked through ``mmtune hint adapt``'s peft adapter loaded by peft alone: they must equal the hypernetwork's.

    python benchmarks/hint_demo.py                       # ~45 minutes on 2 idle cores
    python benchmarks/hint_demo.py --steps 4 --eval-instances 2 --train-eval 0 --timing-instances 2   # a check

Figures: ``OUT/hint_demo.json`` and ``OUT/hint_demo.md``. Finished variants are not retrained (delete their
run directory to redo one).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
import yaml

import mmtune
from mmtune.data.formats import Mapping
from mmtune.data.sni import SniTask, instance_prompt, instruction_text, read_task, task_files
from mmtune.datagen.hint_tasks import TASKS, TRAIN, write_task_collection
from mmtune.evaluation import exact_match
from mmtune.generation.decoding import generate_texts, prompt_ids
from mmtune.generation.options import GenerationOptions
from mmtune.models.hint.adapt import generate_adapters, instructed, open_hint_run, write_adapter
from mmtune.models.run_outputs import load_for_inference

RECIPE = REPO / "configs" / "hint_smollm2.yaml"
HELD_OUT_DIR = REPO / "datasets" / "mmtune-hint-tasks" / "heldout"
VARIANTS = {  # what each variant changes in configs/hint_smollm2.yaml
    "plain": {"task": "sft", "instruction_in_prompt": True},
    "hint": {},
    "hint_fusion": {"fusion": True},
    "no_instruction": {"task": "sft", "instruction_in_prompt": False},
}
MAPPING = Mapping.for_format("sni", {}, {})
LONG_INSTRUCTION_TOKENS = 300


def train_variant(name: str, out: Path, args) -> Path:
    run = out / name
    if (run / "final" / "mmtune.json").is_file():
        print(f"{name}: trained already ({run})")
        return run
    recipe = yaml.safe_load(RECIPE.read_text())
    change = VARIANTS[name]
    if change.get("task") == "sft":  # plain instruction tuning: no hypernetwork
        recipe["task"] = "sft"
        del recipe["hint"]
        recipe["data"]["datasets"][0]["instruction_in_prompt"] = change["instruction_in_prompt"]
    if change.get("fusion"):
        recipe["hint"]["fusion"] = True
    recipe["output_dir"] = str(run)
    recipe["train"].update(max_steps=args.steps, micro_batch_size=args.micro_batch, progress=False)
    started = time.perf_counter()
    mmtune.train(recipe)
    (run / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return run


def instances(folder: Path, limit: int) -> list[tuple[SniTask, list[tuple[str, str]]]]:
    out = []
    for file in task_files(folder):
        task = read_task(file, MAPPING)
        out.append((task, [(row["input"], row["output"][0]) for row in task.instances[:limit]]))
    return out


def replies(model, tokenizer, task: SniTask, pairs, *, in_prompt: bool, max_new_tokens: int) -> list[str]:
    instruction = instruction_text(task) if in_prompt else None
    convs = [[{"role": "user", "content": instance_prompt(x, instruction)}] for x, _ in pairs]
    return generate_texts(model, tokenizer, convs, GenerationOptions(max_new_tokens=max_new_tokens),
                          batch_size=len(convs), progress=False)


def evaluate(name: str, run: Path, task_sets: dict[str, list], max_new_tokens: int) -> dict:
    """Exact match per task of every set, and every held-out reply (for the record)."""
    in_prompt = name in ("plain", "hint_fusion")
    hint = name.startswith("hint")
    if hint:
        opened = open_hint_run(run)
        model, tokenizer = opened.llm, opened.tokenizer
    else:
        model, tokenizer = load_for_inference(str(run))
    result = {}
    for set_name, tasks in task_sets.items():
        per_task, samples = {}, {}
        for task, pairs in tasks:
            if hint:
                with instructed(opened, instruction_text(task)) as instructed_model:
                    got = replies(instructed_model, tokenizer, task, pairs, in_prompt=in_prompt,
                                  max_new_tokens=max_new_tokens)
            else:
                got = replies(model, tokenizer, task, pairs, in_prompt=in_prompt, max_new_tokens=max_new_tokens)
            per_task[task.name] = sum(exact_match(g, y) for g, (_, y) in zip(got, pairs)) / len(pairs)
            samples[task.name] = [{"input": x, "gold": y, "reply": g} for (x, y), g in zip(pairs[:3], got[:3])]
        result[set_name] = {"exact_match": sum(per_task.values()) / len(per_task), "per_task": per_task,
                            "samples": samples}
        print(f"{name}: {set_name} exact match {result[set_name]['exact_match']:.3f}")
    return result


def check_adapter(run: Path, task: SniTask, pairs, max_new_tokens: int) -> dict:
    """The held-out task's replies through ``mmtune hint adapt``'s adapter, loaded by peft alone."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    opened = open_hint_run(run)
    with instructed(opened, instruction_text(task)) as model:
        hyper = replies(model, opened.tokenizer, task, pairs, in_prompt=False, max_new_tokens=max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        base = write_adapter(opened, instruction_text(task), Path(tmp))
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp).eval()
        exported = replies(plain, opened.tokenizer, task, pairs, in_prompt=False, max_new_tokens=max_new_tokens)
    same = sum(a == b for a, b in zip(hyper, exported))
    print(f"hint adapt: {same}/{len(pairs)} replies of '{task.name}' equal through the exported peft adapter")
    return {"task": task.name, "equal_replies": same, "count": len(pairs)}


def long_instruction(task_name: str, tokenizer, seed: int = 0) -> tuple[SniTask, list[tuple[str, str]]]:
    """The task's definition followed by positive examples until the instruction reaches ~300 tokens."""
    rng, spec = random.Random(seed), TASKS[task_name]
    examples: list[tuple[str, str]] = []
    while True:
        examples.append(spec.build(rng))
        task = SniTask(task_name, Path("."), spec.definition, tuple(examples), ())
        if len(tokenizer(instruction_text(task, len(examples)))["input_ids"]) >= LONG_INSTRUCTION_TOKENS:
            break
    inputs = [spec.build(rng) for _ in range(64)]
    return task, inputs


def generator_flops(net, instruction_tokens: int) -> float:
    """2 x multiply-adds of the generator: every query through every block and its kind's heads, plus the
    instruction's projection (cross-attention over the instruction counted through its projections only)."""
    gen = net.generator
    queries = len(net.targets)
    blocks = sum(p.numel() for p in gen.blocks.parameters())
    heads = sum(gen.head_A[t.kind].weight.numel() + gen.head_B[t.kind].weight.numel() for t in net.targets)
    projection = sum(p.numel() for p in gen.instruction_proj.parameters())
    return 2.0 * (queries * blocks + heads + instruction_tokens * projection)


def timing(runs: dict[str, Path], task_name: str, count: int, max_new_tokens: int) -> dict:
    """Per instance: prompt tokens, forward FLOPs (2 x non-embedding params x tokens) and greedy wall time."""
    out = {}
    for name, run in runs.items():
        hint = name.startswith("hint")
        if hint:
            opened = open_hint_run(run)
            model, tokenizer = opened.llm, opened.tokenizer
        else:
            model, tokenizer = load_for_inference(str(run), merge=True)
        task, inputs = long_instruction(task_name, tokenizer)
        instruction = instruction_text(task, len(task.examples))
        n_instr = len(tokenizer(instruction)["input_ids"])
        params = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
        in_prompt = name in ("plain", "hint_fusion")
        convs = [[{"role": "user", "content": instance_prompt(x, instruction if in_prompt else None)}]
                 for x, _ in inputs[:count]]
        prompt_tokens = [len(prompt_ids(tokenizer, c)) for c in convs]
        one_time = {}
        if hint:  # once per task: encode the instruction, generate; then the adapter merged, as deployed
            started = time.perf_counter()
            generate_adapters(opened, instruction)
            one_time = {"seconds": time.perf_counter() - started,
                        "flops": 2 * params * n_instr + generator_flops(opened.hypernetwork, n_instr)}
            adapter_dir = Path(tempfile.mkdtemp(prefix="hint-adapter-"))
            write_adapter(opened, instruction, adapter_dir)
            model, tokenizer = load_for_inference(str(adapter_dir), merge=True)
        opts = GenerationOptions(max_new_tokens=max_new_tokens)
        generate_texts(model, tokenizer, convs[:1], opts, batch_size=1, progress=False)  # warm-up
        started = time.perf_counter()
        got = [generate_texts(model, tokenizer, [c], opts, batch_size=1, progress=False)[0] for c in convs]
        seconds = (time.perf_counter() - started) / len(convs)
        new_tokens = sum(len(tokenizer(g)["input_ids"]) + 1 for g in got) / len(got)
        mean_prompt = sum(prompt_tokens) / len(prompt_tokens)
        out[name] = {"instruction_tokens": n_instr, "prompt_tokens": mean_prompt, "new_tokens": new_tokens,
                     "flops": 2 * params * (mean_prompt + new_tokens), "seconds": seconds, "one_time": one_time}
        print(f"{name}: {mean_prompt:.0f} prompt tokens, {out[name]['flops'] / 1e9:.1f} GFLOPs, {seconds * 1e3:.0f} ms "
              "per instance" + (f"; once per task {one_time['seconds'] * 1e3:.0f} ms" if hint else ""))
    return out


def markdown(figures: dict) -> str:
    variants, timing_of, base = figures["variants"], figures["timing"], figures["timing"].get("plain")
    rows = ["| variant | held-out tasks (exact match) | training tasks, new instances | prompt tokens / instance "
            "| GFLOPs / instance | ms / instance | once per task | training time |",
            "|---|---|---|---|---|---|---|---|"]
    for name in variants:
        ev, t = figures["eval"][name], timing_of[name]
        seen = f"{ev['train_tasks']['exact_match']:.3f}" if "train_tasks" in ev else "-"
        ratio = f" ({t['flops'] / base['flops']:.2f}x)" if base else ""
        once = t["one_time"]
        once_text = f"{once['seconds'] * 1e3:.0f} ms, {once['flops'] / 1e9:.1f} GFLOPs" if once else "-"
        rows.append(f"| {name} | {ev['heldout']['exact_match']:.3f} | {seen} | {t['prompt_tokens']:.0f} | "
                    f"{t['flops'] / 1e9:.2f}{ratio} | {t['seconds'] * 1e3:.0f} | {once_text} | "
                    f"{figures['train_seconds'][name]:.0f} s |")
    rows += ["", "| held-out task | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
    for task in figures["eval"][variants[0]]["heldout"]["per_task"]:
        rows.append(f"| {task} | " + " | ".join(f"{figures['eval'][v]['heldout']['per_task'][task]:.2f}"
                                                for v in variants) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/hint-demo")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--eval-instances", type=int, default=24, help="instances per held-out task")
    p.add_argument("--train-eval", type=int, default=6, help="fresh instances per training task (0: skip)")
    p.add_argument("--timing-instances", type=int, default=16)
    p.add_argument("--timing-task", default="sort_numbers_descending")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    runs = {name: train_variant(name, out, args) for name in variants}
    sets = {"heldout": instances(HELD_OUT_DIR, args.eval_instances)}
    if args.train_eval:
        fresh = out / "fresh-instances"  # the training tasks drawn with another seed: instances not trained on
        write_task_collection(fresh, seed=1, train_instances=args.train_eval, heldout_instances=1)
        trained_inputs = {t.name: {row["input"] for row in t.instances}
                          for t, _ in instances(REPO / "datasets" / "mmtune-hint-tasks" / "train", 10**6)}
        sets["train_tasks"] = [(t, [(x, y) for x, y in pairs if x not in trained_inputs[t.name]])
                               for t, pairs in instances(fresh / "train", args.train_eval) if t.name in TRAIN]
    figures = {"variants": variants, "steps": args.steps, "micro_batch": args.micro_batch,
               "train_seconds": {n: float((r / "train_seconds.txt").read_text()) if (r / "train_seconds.txt").is_file()
                                 else 0.0 for n, r in runs.items()},
               "eval": {n: evaluate(n, r, sets, args.max_new_tokens) for n, r in runs.items()}}
    if "hint" in runs:
        task, pairs = sets["heldout"][0]
        figures["adapter_check"] = check_adapter(runs["hint"], task, pairs, args.max_new_tokens)
    figures["timing"] = timing(runs, args.timing_task, args.timing_instances, args.max_new_tokens)
    (out / "hint_demo.json").write_text(json.dumps(figures, indent=2))
    table = markdown(figures)
    (out / "hint_demo.md").write_text(table)
    print(table)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
