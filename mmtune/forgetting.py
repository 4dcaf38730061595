"""The forgetting report of sequential tuning: each stage's model on every earlier stage's held-out sets.

After each stage, its ``final/`` is evaluated (``mmtune.evaluation.evaluate``:
the loss exactly as in training, exact match and numeric accuracy on greedy
answers) on the held-out sets of that stage and every earlier one, and on the
recipe's general sets. A stage's figures are kept in its run directory
(``forgetting_eval.json``), so a resumed run evaluates nothing twice. The table
is ``output_dir/forgetting.json``::

    {"metric": "loss", "sets": [...], "stages": [...], "table": {stage: {set: value}},
     "tables": {metric: {stage: {set: value}}}}

(``null`` where a stage came before the set's own stage) and the same as
Markdown in ``forgetting.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtune.config.schema import ForgettingConfig
from mmtune.utils.atomic import atomic_write_text

STAGE_FILE = "forgetting_eval.json"
FIGURE = {"loss": ("loss", "loss"), "exact": ("exact", "accuracy"), "numeric": ("numeric", "accuracy")}
"""Each metric's figure in an ``EvalReport``'s ``metrics``."""


def evaluate_stage(run_dir: Path, sets: list[str], cfg: ForgettingConfig, *, max_length: int) -> dict[str, dict]:
    """``{set: {metric: value}}`` of ``run_dir/final`` on ``sets``; figures already in ``run_dir`` are reused."""
    from mmtune.evaluation import evaluate
    from mmtune.generation.options import GenerationOptions
    from mmtune.models.run_outputs import load_for_inference

    file = run_dir / STAGE_FILE
    settings = cfg.model_dump(mode="json", exclude={"general"}) | {"max_length": max_length}
    kept = json.loads(file.read_text()) if file.is_file() else {}
    results = kept.get("results", {}) if kept.get("settings") == settings else {}
    missing = [s for s in sets if s not in results]
    if missing:
        model, tokenizer = load_for_inference(str(run_dir))
        for name in missing:
            report = evaluate(model, tokenizer, name, cfg.metrics, GenerationOptions(max_new_tokens=cfg.max_new_tokens),
                              max_samples=cfg.max_samples, max_length=max_length, records=False, progress=False)
            results[name] = {m: report.metrics[FIGURE[m][0]][FIGURE[m][1]] for m in cfg.metrics}
        atomic_write_text(file, json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    return {s: results[s] for s in sets}


def forgetting_table(stages: list[str], sets: list[str], results: dict[str, dict[str, dict]],
                     metrics: list[str]) -> dict:
    """The report's JSON: ``results[stage][set][metric]``, ``null`` where a stage did not evaluate a set."""
    tables = {m: {st: {s: results.get(st, {}).get(s, {}).get(m) for s in sets} for st in stages} for m in metrics}
    return {"metric": metrics[0], "sets": sets, "stages": stages, "table": tables[metrics[0]], "tables": tables}


def write_report(output_dir: Path, report: dict) -> tuple[Path, Path]:
    """``forgetting.json`` and ``forgetting.md`` (one table per metric, a row per stage)."""
    legend = ("Each row: the model after that stage; each column: a held-out set (loss: lower is better; "
              "exact / numeric: accuracy, higher is better). Empty: the set's stage comes later.")
    lines = ["# Forgetting report", "", legend, ""]
    for metric, table in report["tables"].items():
        lines += [f"## {metric}", "", "| after stage | " + " | ".join(f"`{s}`" for s in report["sets"]) + " |",
                  "|---|" + "---|" * len(report["sets"])]
        for stage in report["stages"]:
            cells = ["" if table[stage][s] is None else f"{table[stage][s]:.3f}" for s in report["sets"]]
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
        lines.append("")
    json_path, md_path = output_dir / "forgetting.json", output_dir / "forgetting.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, "\n".join(lines))
    return json_path, md_path
