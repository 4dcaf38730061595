"""Evol-Instruct (Xu et al. 2023, WizardLM): make instructions harder (in depth) or rarer (in breadth).

Every round, each instruction in the pool is rewritten with one operation
drawn at random (add constraints, deepen, concretize, increase reasoning, or
breadth), the model answers the rewritten instruction, and the elimination
filter drops failed evolutions. A successful evolution replaces its parent in
the pool, so the next round evolves it further; a failed one leaves the
parent in place. Each success is one alpaca row.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

import mmtune.datagen.filters as filters
import mmtune.datagen.prompts as prompts
from mmtune.datagen.report import GenerationReport, counters_dict
from mmtune.datagen.sampler import Sampler
from mmtune.datagen.self_instruct import DEFAULT_SEEDS, derived_seed, file_digest, load_seed_tasks
from mmtune.datagen.store import RunFolder
from mmtune.errors import ConfigError, DataError

METHOD = "evol-instruct"
SEEDS_FORMAT = "self-instruct-seeds"


@dataclass
class EvolInstructOptions:
    input: Path = DEFAULT_SEEDS
    """Instructions to evolve: a Self-Instruct seed file, or any file mmtune reads (first user turn is used)."""
    input_format: str = SEEDS_FORMAT
    """``self-instruct-seeds`` or an mmtune data format (alpaca, sharegpt, openai, dolly, ...)."""
    rounds: int = 1
    """Evolution rounds over the pool (WizardLM used 4)."""
    limit: int | None = None
    """Evolve only the first N instructions of the input."""
    batch_size: int = 8
    seed: int = 0
    max_new_tokens: int = 192
    """Tokens for a rewritten instruction."""
    response_max_new_tokens: int = 384
    """Tokens for the response; a response cut off by this limit fails the filter."""


def read_instructions(path: Path, fmt: str) -> list[str]:
    """The instructions to evolve; seed tasks contribute instruction + the first instance's input."""
    if fmt == SEEDS_FORMAT:
        out = []
        for t in load_seed_tasks(path):
            inp = t.instances[0][0].strip()
            out.append(f"{t.instruction}\n\n{inp}" if inp else t.instruction)
        return out
    from mmtune.config.schema import DatasetSpec
    from mmtune.data.pipeline import SourceReport, conversations_of
    from mmtune.data.sources import resolve_source

    src = resolve_source(DatasetSpec(path=str(path), format=fmt))
    return [next(m["content"] for m in conv if m["role"] == "user")
            for _, conv in conversations_of(src, SourceReport(src.name), "skip")]


def evol_instruct(out_dir: Path, sampler: Sampler, opts: EvolInstructOptions, *, progress: bool = True) -> GenerationReport:
    """Evolve the input instructions into ``out_dir`` (resuming what is there); returns the report."""
    if opts.rounds < 1 or opts.batch_size < 1:
        raise ConfigError("rounds and batch_size must be at least 1")
    originals = read_instructions(opts.input, opts.input_format)[: opts.limit]
    if not originals:
        raise DataError(f"{opts.input}: no instructions to evolve", reason="empty input")
    settings = {
        "seed": opts.seed, "batch_size": opts.batch_size, "input": str(Path(opts.input).resolve()),
        "input_sha256": file_digest(opts.input),
        "input_format": opts.input_format, "limit": opts.limit, "max_new_tokens": opts.max_new_tokens,
        "response_max_new_tokens": opts.response_max_new_tokens, "sampler": sampler.settings(),
    }
    folder = RunFolder(out_dir)
    state, rows = folder.open(METHOD, settings)
    current = list(originals)
    for row in rows:  # replaying accepted evolutions rebuilds the pool as it was
        current[row["slot"]] = row["instruction"]
    seen = {filters.normalize(t) for t in originals} | {filters.normalize(r["instruction"]) for r in rows}
    per_round = math.ceil(len(originals) / opts.batch_size)
    total_batches = per_round * opts.rounds
    done_rounds, done_k = divmod(state.batches_done, per_round)
    bar = tqdm(total=opts.rounds * len(originals), initial=done_rounds * len(originals) + done_k * opts.batch_size,
               desc=METHOD, unit="instr", disable=not progress)
    while state.batches_done < total_batches:
        g = state.batches_done
        rnd, k = divmod(g, per_round)
        slots = list(range(k * opts.batch_size, min((k + 1) * opts.batch_size, len(originals))))
        new_rows = _evolve_batch(slots, current, seen, sampler, opts, g, rnd + 1, state.counters)
        for row in new_rows:
            current[row["slot"]] = row["instruction"]
        state.counters["evolution: accepted"] += len(new_rows)
        folder.commit(state, new_rows)
        bar.update(len(slots))
        bar.set_postfix(round=rnd + 1, rows=state.rows)
    bar.close()
    report = GenerationReport(METHOD, str(out_dir), state.batches_done, state.rows, state.rows,
                              counters_dict(state.counters))
    folder.write_report(report.as_dict())
    return report


def _evolve_batch(slots, current, seen, sampler, opts, g, round_no, counters: Counter) -> list[dict]:
    methods = [random.Random(derived_seed(opts.seed, g, slot, "method")).choice(prompts.EVOLUTIONS) for slot in slots]
    evolved = sampler.complete([prompts.evolution_prompt(m, current[s]) for m, s in zip(methods, slots)], chat=True,
                               seed=derived_seed(opts.seed, g, "evolve"), max_new_tokens=opts.max_new_tokens)
    counters["evolution: candidates"] += len(slots)
    survivors = []
    for slot, method, comp in zip(slots, methods, evolved):
        counters[f"operation: {method}"] += 1
        text = comp.text.strip()
        reason = "unfinished evolution (length)" if comp.truncated else filters.evolution_rejection(current[slot], text)
        if reason is None and filters.normalize(text) in seen:
            reason = "duplicate"
        if reason:
            counters[f"evolution: {reason}"] += 1
            continue
        seen.add(filters.normalize(text))
        survivors.append((slot, method, text))
    answers = sampler.complete([text for _, _, text in survivors], chat=True, seed=derived_seed(opts.seed, g, "respond"),
                               max_new_tokens=opts.response_max_new_tokens)
    rows = []
    for (slot, method, text), ans in zip(survivors, answers):
        reason = "response unfinished (length)" if ans.truncated else filters.response_rejection(ans.text)
        if reason:
            counters[f"evolution: {reason}"] += 1
            seen.discard(filters.normalize(text))
            continue
        rows.append({"instruction": text, "input": "", "output": ans.text.strip(), "evolution": method,
                     "round": round_no, "slot": slot, "parent": current[slot], "method": METHOD})
    return rows
