"""The output folder of a generation run: append-only rows, a state file, a report.

``data.jsonl`` holds accepted rows in alpaca form (``instruction``, ``input``,
``output`` plus provenance fields the alpaca reader ignores); ``state.json``
holds how many batches are done, how many rows that produced, and the
per-filter counters. Rows are appended and flushed before the state is
replaced atomically, so after a crash the state never counts rows that are
not on disk; rows written after the last state update are cut off on resume
and regenerated identically (every batch is seeded by its number).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.errors import ConfigError, DataError

DATA_FILE = "data.jsonl"
STATE_FILE = "state.json"
REPORT_FILE = "report.json"


@dataclass
class RunState:
    method: str
    settings: dict[str, Any]
    """What must not change between a run and its resumption (seed, model, prompts' sources)."""
    batches_done: int = 0
    rows: int = 0
    counters: Counter = field(default_factory=Counter)


class RunFolder:
    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir)
        self.data = self.dir / DATA_FILE
        self.state_file = self.dir / STATE_FILE
        self.report_file = self.dir / REPORT_FILE

    def open(self, method: str, settings: dict[str, Any]) -> tuple[RunState, list[dict]]:
        """The saved state and accepted rows (a fresh state if the folder is new)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.state_file.is_file():
            if self.data.exists() and self.data.stat().st_size:
                raise ConfigError(f"{self.data}: exists without {STATE_FILE}; use an empty output folder")
            self.data.write_text("")
            return RunState(method, settings), []
        saved = json.loads(self.state_file.read_text())
        state = RunState(saved["method"], saved["settings"], saved["batches_done"], saved["rows"],
                         Counter(saved["counters"]))
        if state.method != method or state.settings != settings:
            changed = sorted(k for k in {*settings, *state.settings} if settings.get(k) != state.settings.get(k))
            raise ConfigError(
                f"{self.dir}: holds a {state.method} run with different settings ({', '.join(changed) or 'method'}); "
                "resume with the same settings or use a new output folder"
            )
        rows = self._read_rows(state.rows)
        return state, rows

    def _read_rows(self, expected: int) -> list[dict]:
        rows, end = [], 0
        with open(self.data, "rb") as fh:
            for i, line in enumerate(fh, 1):
                if len(rows) == expected:
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{self.data}:{i}: unreadable row ({exc.msg})", reason="malformed JSON") from None
                end += len(line)
        if len(rows) < expected:
            raise DataError(f"{self.data}: {len(rows)} rows but {STATE_FILE} counts {expected}", reason="truncated")
        with open(self.data, "r+b") as fh:  # drop rows of a batch the state never recorded
            fh.truncate(end)
        return rows

    def commit(self, state: RunState, new_rows: list[dict]) -> None:
        """Append the rows of one finished batch, then record the batch in the state."""
        with open(self.data, "a", encoding="utf-8") as fh:
            for row in new_rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        state.rows += len(new_rows)
        state.batches_done += 1
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"method": state.method, "settings": state.settings,
                                   "batches_done": state.batches_done, "rows": state.rows,
                                   "counters": dict(state.counters)}, indent=2))
        os.replace(tmp, self.state_file)

    def write_report(self, report: dict[str, Any]) -> None:
        self.report_file.write_text(json.dumps(report, indent=2) + "\n")
