"""What a generation run produced and what each filter removed, as JSON and as a printed table."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class GenerationReport:
    method: str
    out_dir: str
    batches: int
    rows: int
    """Alpaca rows in ``data.jsonl``."""
    accepted: int
    """Accepted tasks (Self-Instruct) or successful evolutions (Evol-Instruct)."""
    counters: dict[str, int] = field(default_factory=dict)
    """``stage: reason`` -> count; ``stage: candidates`` is how many items entered that stage."""

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"{self.method}: {self.accepted} accepted, {self.rows} rows in {Path(self.out_dir) / 'data.jsonl'} "
                 f"({self.batches} batches)"]
        stages = list(dict.fromkeys(k.split(": ", 1)[0] for k in self.counters))
        for stage in stages:
            total = self.counters.get(f"{stage}: candidates", 0)
            lines.append(f"  {stage}: {total} candidates" if total else f"  {stage}:")
            for key, n in sorted(self.counters.items(), key=lambda kv: -kv[1]):
                name, _, reason = key.partition(": ")
                if name == stage and reason != "candidates":
                    share = f" ({100 * n / total:.1f}%)" if total else ""
                    lines.append(f"    {reason:<40} {n:>7}{share}")
        return "\n".join(lines)


def counters_dict(counters: Counter) -> dict[str, int]:
    """Non-zero counters, sorted: a reason that never fired is not listed."""
    return {k: int(v) for k, v in sorted(counters.items()) if v}
