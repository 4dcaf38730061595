"""The side-by-side results table shared by the benchmark scripts (mmtune vs a Hugging Face baseline).

Both sides report the same timing figures (steps, trained targets, timed seconds, tokens/s), so
those rows are built here once; each script adds the rows only it measures. The scripts that run
each side in its own process with DataLoader workers (``bench_llava.py``, ``bench_instructblip.py``)
also share their data-wait, padding, memory and parameter rows and the targets they check.
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


def tok_s_ratio(mm: dict, bl: dict) -> float:
    """mmtune's trained tokens/s over the baseline's."""
    return mm["tok_s"] / bl["tok_s"] if bl["tok_s"] > 0 else float("nan")


def side_process_rows(plan: dict, mm: dict, bl: dict) -> list[tuple[str, str, str]]:
    """Rows of the benchmarks whose sides run in their own processes, with ``plan['workers']`` DataLoader workers."""
    return [
        (f"data wait, {plan['workers']} workers (max step)", f"{mm['data_wait']:.2%} ({mm['data_wait_max']:.2%})",
         f"{bl['data_wait']:.2%}"),
        ("pad fraction of fed tokens", f"{plan['mm_pad_fraction_fed']:.1%}", f"{bl['padding_fraction']:.1%}"),
        ("packing utilisation", f"{mm['packing_utilisation']:.1%}", "-"),
        ("peak RSS MiB main / largest worker", f"{mm['rss']['main_mib']:.0f} / {mm['rss']['largest_worker_mib']:.0f}",
         f"{bl['rss']['main_mib']:.0f} / {bl['rss']['largest_worker_mib']:.0f}"),
        ("process wall s (incl. load)", f"{mm['process_wall_s']:.1f}", f"{bl['process_wall_s']:.1f}"),
        ("parameters trainable / total", f"{mm['params']['trainable']:,} / {mm['params']['total']:,}",
         f"{bl['params']['trainable']:,} / {bl['params']['total']:,}"),
    ]


def print_side_process_targets(mm: dict, bl: dict, ratio: float) -> bool:
    """Whether both sides trained the same targets (a warning when not), then the targets of those benchmarks:
    mmtune at least 1.5x the baseline's trained tokens/s, and waiting for data less than 5% of step time."""
    same = mm["targets_total"] == bl["targets_total"]
    if not same:
        print(f"WARNING: the two sides trained different target counts ({mm['targets_total']} vs {bl['targets_total']})")
    print(f"ratio mmtune/baseline: {ratio:.2f}x (vs baseline compute-only: "
          f"{mm['tok_s'] / bl['tok_s_compute_only']:.2f}x); target >= 1.5x: {'MET' if ratio >= 1.5 else 'NOT MET'}")
    print(f"mmtune data wait: {mm['data_wait']:.2%} of step time; target < 5%: "
          f"{'MET' if mm['data_wait'] < 0.05 else 'NOT MET'}")
    return same


def side_process_target_flags(mm: dict, ratio: float) -> str:
    """The same two targets for the one-line ``RESULT`` summary."""
    return (f"target_1.5x={'met' if ratio >= 1.5 else 'not_met'} "
            f"target_wait_5pct={'met' if mm['data_wait'] < 0.05 else 'not_met'}")
