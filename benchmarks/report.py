"""The side-by-side results table shared by the benchmark scripts (mmtune vs a Hugging Face baseline).

Both sides report the same timing figures (steps, trained targets, timed seconds, tokens/s), so
those rows are built here once; each script adds the rows only it measures.
"""

from __future__ import annotations


def timing_rows(mm: dict, bl: dict) -> list[tuple[str, str, str]]:
    """Rows common to every benchmark: what was timed and how fast, mmtune then baseline."""

    def per_step(side: dict) -> str:
        s = side["step_tok_s"]
        return f"{s['p50']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    return [
        ("optimizer steps (timed)", f"{mm['steps']} ({mm['timed_steps']})", f"{bl['steps']} ({bl['timed_steps']})"),
        ("trained targets (all / timed)", f"{mm['targets_total']:,} / {mm['targets_timed']:,}",
         f"{bl['targets_total']:,} / {bl['targets_timed']:,}"),
        ("timed training seconds", f"{mm['seconds_timed']:.2f}", f"{bl['seconds_timed']:.2f}"),
        ("step-1 (warm-up, excluded) s", f"{mm['step1_seconds'] or float('nan'):.2f}",
         f"{bl['step1_seconds'] or float('nan'):.2f}"),
        ("trained tokens/s", f"{mm['tok_s']:.1f}", f"{bl['tok_s']:.1f}"),
        ("  per step: p50 (min-max)", per_step(mm), per_step(bl)),
        ("  baseline compute-only tok/s", "", f"{bl['tok_s_compute_only']:.1f}"),
    ]


def print_table(rows: list[tuple[str, str, str]]) -> None:
    w0 = max(len(a) for a, _, _ in rows) + 2
    w1 = max(len(b) for _, b, _ in rows) + 2
    for a, b, c in rows:
        print(f"{a:<{w0}}{b:<{w1}}{c}")
