"""Self-Instruct (Wang et al. 2022): grow a task pool from a few human-written seed tasks.

Each batch: ``batch_size`` prompts of 8 in-context instructions (6 seeds + 2
generated, as in the paper) are continued by the model; the new instructions
pass the heuristic filter, exact deduplication and ROUGE-L < 0.7 against the
whole pool; each is labelled classification or not (few-shot, greedy), and its
instances are generated input-first (generation) or output-first
(classification) and filtered. A task with at least one valid instance is
accepted: its instances become alpaca rows and its instruction joins the pool.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

import mmtune.datagen.filters as filters
import mmtune.datagen.prompts as prompts
from mmtune.datagen.prompts import SeedTask
from mmtune.datagen.report import GenerationReport, counters_dict
from mmtune.datagen.rouge import RougePool
from mmtune.datagen.sampler import Sampler
from mmtune.datagen.store import RunFolder
from mmtune.errors import ConfigError, DataError

DEFAULT_SEEDS = Path(__file__).resolve().parents[2] / "datasets" / "self-instruct-seeds.jsonl"
METHOD = "self-instruct"


@dataclass
class SelfInstructOptions:
    seeds: Path = DEFAULT_SEEDS
    """Seed tasks: JSONL rows ``{instruction, instances: [{input, output}], is_classification}``."""
    count: int = 100
    """Stop after the batch in which this many tasks have been accepted."""
    batch_size: int = 8
    """Instruction-list prompts per batch (one batch = one resumable step)."""
    followup_batch_size: int = 32
    """Type and instance prompts per model call: a batch yields several candidates per prompt, and
    sampling many short continuations together costs little more per step than a few on a CPU."""
    max_batches: int | None = None
    """Give up after this many batches; None = 10 x the batches ``count`` would need if every prompt gave one task."""
    seed: int = 0
    prompt_instructions: int = 8
    machine_instructions: int = 2
    """Of the in-context instructions, how many come from the generated pool (once it has them)."""
    rouge_threshold: float = 0.7
    """A new instruction is kept only if its ROUGE-L against every pool instruction is below this."""
    max_instances: int = 5
    classification_demos: int = 12
    instance_demos: int = 4
    max_new_tokens: int = 128
    """Tokens for the continued instruction list."""
    instance_max_new_tokens: int = 192

    def batch_limit(self) -> int:
        return self.max_batches if self.max_batches is not None else 10 * math.ceil(self.count / self.batch_size)


def load_seed_tasks(path: Path) -> list[SeedTask]:
    """Read and check a seed file; a bad row is a one-line error naming file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: seed task file not found", reason="missing file")
    tasks = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: malformed JSON ({exc.msg})", reason="malformed JSON") from None
        inst, instances, is_clf = row.get("instruction"), row.get("instances"), row.get("is_classification")
        if not isinstance(inst, str) or not inst.strip():
            raise DataError(f"{where}: field 'instruction' must be a non-empty string", reason="missing field")
        if not isinstance(is_clf, bool):
            raise DataError(f"{where}: field 'is_classification' must be true or false", reason="wrong field type")
        if not isinstance(instances, list) or not instances or not all(
            isinstance(x, dict) and isinstance(x.get("input", ""), str) and isinstance(x.get("output"), str)
            for x in instances
        ):
            raise DataError(f"{where}: field 'instances' must be a non-empty list of {{input, output}} strings",
                            reason="wrong field type")
        tasks.append(SeedTask(inst.strip(), tuple((x.get("input", ""), x["output"]) for x in instances), is_clf))
    return tasks


def file_digest(path: Path) -> str:
    """Content hash of an input file: a resumed run must read the same data."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def derived_seed(*parts) -> int:
    """A 63-bit seed from the run seed, batch number and stage: stable across processes and resumes."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big") >> 1


def in_context_instructions(rng: random.Random, seeds: list[str], machine: list[str], opts: SelfInstructOptions) -> list[str]:
    """``machine_instructions`` generated ones (as many as exist) + seeds up to ``prompt_instructions``, shuffled."""
    chosen = rng.sample(machine, min(opts.machine_instructions, len(machine)))
    chosen += rng.sample(seeds, min(opts.prompt_instructions - len(chosen), len(seeds)))
    rng.shuffle(chosen)
    return chosen


def balanced_demos(rng: random.Random, tasks: list[SeedTask], n: int) -> list[SeedTask]:
    """Half classification and half generation seed tasks (as available), shuffled."""
    clf = [t for t in tasks if t.is_classification]
    gen = [t for t in tasks if not t.is_classification]
    k = min(n // 2, len(clf))
    picked = rng.sample(clf, k) + rng.sample(gen, min(n - k, len(gen)))
    rng.shuffle(picked)
    return picked


def clean_instances(pairs: list[tuple[str, str]], truncated: bool, counters: Counter, limit: int) -> list[tuple[str, str]]:
    """The paper's instance filters: unfinished last one, invalid ones, conflicting and duplicate ones."""
    counters["instance: candidates"] += len(pairs)
    if truncated and pairs:
        pairs = pairs[:-1]
        counters["instance: unfinished (length)"] += 1
    valid = []
    for inp, out in pairs:
        reason = filters.instance_rejection(inp, out)
        if reason:
            counters[f"instance: {reason}"] += 1
        else:
            valid.append((inp, out))
    outputs_by_input: dict[str, set[str]] = {}
    for inp, out in valid:
        if inp:
            outputs_by_input.setdefault(inp, set()).add(out)
    if any(len(outs) > 1 for outs in outputs_by_input.values()):
        counters["instance: same input, different outputs"] += len(valid)
        return []
    unique = list(dict.fromkeys(valid))
    counters["instance: duplicate"] += len(valid) - len(unique)
    counters["instance: over max_instances"] += max(0, len(unique) - limit)
    counters["instance: accepted"] += min(len(unique), limit)
    return unique[:limit]


def self_instruct(out_dir: Path, sampler: Sampler, opts: SelfInstructOptions, *, progress: bool = True) -> GenerationReport:
    """Generate Self-Instruct tasks into ``out_dir`` (resuming what is there); returns the report."""
    if opts.machine_instructions > opts.prompt_instructions:
        raise ConfigError("machine_instructions must not exceed prompt_instructions")
    seed_tasks = load_seed_tasks(opts.seeds)
    if len(seed_tasks) < opts.prompt_instructions - opts.machine_instructions:
        raise DataError(f"{opts.seeds}: {len(seed_tasks)} seed tasks, need at least "
                        f"{opts.prompt_instructions - opts.machine_instructions}", reason="too few seeds")
    seed_instructions = [t.instruction for t in seed_tasks]
    settings = {
        "seed": opts.seed, "batch_size": opts.batch_size, "followup_batch_size": opts.followup_batch_size,
        "seeds": str(Path(opts.seeds).resolve()), "seeds_sha256": file_digest(opts.seeds),
        "prompt_instructions": opts.prompt_instructions, "machine_instructions": opts.machine_instructions,
        "rouge_threshold": opts.rouge_threshold, "max_instances": opts.max_instances,
        "classification_demos": opts.classification_demos, "instance_demos": opts.instance_demos,
        "max_new_tokens": opts.max_new_tokens, "instance_max_new_tokens": opts.instance_max_new_tokens,
        "sampler": sampler.settings(),
    }
    folder = RunFolder(out_dir)
    state, rows = folder.open(METHOD, settings)
    machine = list(dict.fromkeys(r["instruction"] for r in rows))
    pool = RougePool(seed_instructions + machine)
    seen = {filters.normalize(s) for s in seed_instructions + machine}
    bar = tqdm(total=opts.count, initial=min(len(machine), opts.count), desc=METHOD, unit="task", disable=not progress)
    while len(machine) < opts.count and state.batches_done < opts.batch_limit():
        b = state.batches_done
        rng = random.Random(derived_seed(opts.seed, b, "prompts"))
        batch_prompts = [prompts.instruction_prompt(in_context_instructions(rng, seed_instructions, machine, opts))
                         for _ in range(opts.batch_size)]
        completions = sampler.complete(batch_prompts, chat=False, seed=derived_seed(opts.seed, b, "instructions"),
                                       max_new_tokens=opts.max_new_tokens, stop=prompts.INSTRUCTION_STOP)
        candidates = _filter_instructions(completions, pool, seen, opts, state.counters)
        tasks = _type_and_instances(candidates, seed_tasks, sampler, opts, b, state.counters)
        new_rows = []
        for instruction, is_clf, instances in tasks:
            machine.append(instruction)
            pool.add(instruction)
            seen.add(filters.normalize(instruction))
            new_rows += [{"instruction": instruction, "input": inp, "output": out, "is_classification": is_clf,
                          "task": len(machine), "method": METHOD} for inp, out in instances]
        state.counters["task: accepted"] += len(tasks)
        folder.commit(state, new_rows)
        bar.update(min(len(machine), opts.count) - bar.n)
        bar.set_postfix(batch=state.batches_done, rows=state.rows)
    bar.close()
    report = GenerationReport(METHOD, str(out_dir), state.batches_done, state.rows, len(machine),
                              counters_dict(state.counters))
    folder.write_report(report.as_dict())
    return report


def _filter_instructions(completions, pool: RougePool, seen: set[str], opts: SelfInstructOptions, counters: Counter) -> list[str]:
    batch_pool = RougePool()
    kept: list[str] = []
    kept_keys: set[str] = set()
    for comp in completions:
        items = prompts.parse_instructions(comp.text, False)
        if comp.truncated and items:
            items = items[:-1]
            counters["instruction: unfinished (length)"] += 1
        counters["instruction: candidates"] += len(items) + (1 if comp.truncated and comp.text.strip() else 0)
        for inst in items:
            reason = filters.instruction_rejection(inst)
            key = filters.normalize(inst)
            if reason is None and (key in seen or key in kept_keys):
                reason = "duplicate"
            if reason is None and max(pool.max_score(inst, stop_at=opts.rouge_threshold),
                                      batch_pool.max_score(inst, stop_at=opts.rouge_threshold)) >= opts.rouge_threshold:
                reason = "ROUGE-L too similar"
            if reason:
                counters[f"instruction: {reason}"] += 1
                continue
            kept.append(inst)
            kept_keys.add(key)
            batch_pool.add(inst)
    counters["instruction: passed"] += len(kept)
    return kept


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield i, items[i:i + size]


def _type_and_instances(candidates, seed_tasks, sampler, opts, b, counters):
    """(instruction, is_classification, instances) for candidates that get at least one valid instance."""
    rng = random.Random(derived_seed(opts.seed, b, "demos"))
    clf_demos = balanced_demos(rng, seed_tasks, opts.classification_demos)
    types: list[bool] = []
    for i, chunk in _chunks(candidates, opts.followup_batch_size):
        answers = sampler.complete([prompts.classification_prompt(clf_demos, c) for c in chunk], chat=False,
                                   seed=derived_seed(opts.seed, b, "type", i), max_new_tokens=3, greedy=True,
                                   stop=("\n",))
        for a in answers:
            verdict = prompts.parse_yes_no(a.text)
            counters["type: unclear, taken as generation"] += verdict is None
            types.append(bool(verdict))
    counters["type: classification"] += sum(types)
    counters["task: candidates"] += len(candidates)
    results = []
    for i, chunk in _chunks(list(zip(candidates, types)), opts.followup_batch_size):
        instance_prompts = []
        for inst, is_clf in chunk:
            pool = [t for t in seed_tasks if t.is_classification == is_clf] or seed_tasks
            demos = rng.sample(pool, min(opts.instance_demos, len(pool)))
            instance_prompts.append(prompts.instance_prompt(demos, inst, is_clf))
        outs = sampler.complete(instance_prompts, chat=False, seed=derived_seed(opts.seed, b, "instances", i),
                                max_new_tokens=opts.instance_max_new_tokens, stop=prompts.INSTANCE_STOP)
        for (inst, is_clf), comp in zip(chunk, outs):
            parse = prompts.parse_classification_instances if is_clf else prompts.parse_generation_instances
            instances = clean_instances(parse(comp.text), comp.truncated, counters, opts.max_instances)
            if instances:
                results.append((inst, is_clf, instances))
            else:
                counters["task: no valid instance"] += 1
    return results
