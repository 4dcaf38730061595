"""The report as one self-contained HTML page: styles inline, images as ``data:`` URLs, every text escaped.

Sections, top to bottom: what the run is (task, model, method, headline
figures); for a multi-stage run the forgetting table and then each stage;
each run's curves, data report and trainable-parameter table; the validation
samples answered by ``final/``. Anything ``summary.json`` holds that has no
section of its own is listed under "Other figures", so nothing a task records
is left out.
"""

from __future__ import annotations

import json
import statistics
from html import escape

from mmtune.reporting.media import MediaView
from mmtune.reporting.plots import Chart, forgetting_chart, run_charts
from mmtune.reporting.run_files import Forgetting, RunFiles
from mmtune.reporting.samples import ConversationSample, EditSample, SampleSection

_SHOWN = {"steps", "final_loss", "targets_seen", "skipped_while_batching", "packing_utilisation", "data", "trainable"}
"""``summary.json`` keys with a place of their own in the page."""

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2329;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #d5d9de;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 8px}.muted{color:#67707a}
table{border-collapse:collapse;background:#fff;margin:6px 0 12px}
th,td{border:1px solid #dde1e5;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.figure{background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:6px 12px;min-width:120px}
.figure b{display:block;font-size:17px}.figure span{font-size:12px;color:#67707a}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:12px}
.chart{background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:8px}
.chart img{max-width:100%}.chart p{margin:2px 4px;font-size:12px;color:#67707a}
.sample{background:#fff;border:1px solid #dde1e5;border-radius:6px;padding:10px 12px;margin:12px 0}
.sample .cols{display:grid;grid-template-columns:repeat(3,1fr);gap:10px}
.sample pre{white-space:pre-wrap;word-break:break-word;background:#f6f7f9;border-radius:4px;padding:6px 8px;margin:0;
font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace;max-height:320px;overflow:auto}
.sample h4{margin:0 0 4px;font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#67707a}
.media{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}.media figure{margin:0}
.media figcaption{font-size:11px;color:#67707a}
.media img{border:1px solid #dde1e5;max-width:100%;min-height:96px;image-rendering:pixelated}
.problem{color:#a33}.note{background:#fff7e0;border:1px solid #ecd9a0;border-radius:6px;padding:8px 12px}
.edit img{width:100%;max-width:320px;border:1px solid #dde1e5;image-rendering:pixelated}
"""


def esc(value) -> str:
    return escape(str(value), quote=True)


def _number(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:,.{digits}f}"
    return esc(value)


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (escaped by the caller); ``numeric`` columns are right-aligned."""
    out = ["<table><tr>", *(f"<th>{esc(h)}</th>" for h in head), "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{cell}</td>"
                                    for i, cell in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


# --------------------------------------------------------------------------- one run


def headline(run: RunFiles) -> list[tuple[str, str]]:
    """The run's figures at a glance: ``(label, value)``, only those the run recorded."""
    figures: list[tuple[str, str]] = []
    summary = run.summary
    steps = summary.get("steps", run.records[-1]["step"] if run.records else None)
    if steps is not None:
        figures.append(("steps", _number(steps)))
    if summary.get("final_loss") is not None:
        figures.append(("final training loss", _number(summary["final_loss"])))
    evals = run.series("eval_loss")
    if evals.steps:
        best = min(range(len(evals.values)), key=evals.values.__getitem__)
        figures.append(("last eval loss", _number(evals.values[-1])))
        figures.append((f"best eval loss (step {evals.steps[best]})", _number(evals.values[best])))
    if summary.get("targets_seen") is not None:
        figures.append(("targets seen", _number(summary["targets_seen"])))
    key = run.throughput_key()
    medians = [(key.replace("_per_s", "/s"), run.series(key), 1, "")] if key else []
    medians += [("data wait", run.series("data_wait"), 100, " %"), ("MFU", run.series("mfu"), 100, " %")]
    for label, series, scale, unit in medians:
        if series.values:
            figures.append((f"{label} (median)", f"{statistics.median(series.values) * scale:,.1f}{unit}"))
    if summary.get("packing_utilisation") is not None:
        figures.append(("packing utilisation", f"{100 * summary['packing_utilisation']:.1f} %"))
    return figures


def _figures(figures: list[tuple[str, str]]) -> str:
    return '<div class="figures">' + "".join(f'<div class="figure"><b>{value}</b><span>{esc(label)}</span></div>'
                                             for label, value in figures) + "</div>"


def _charts(charts: list[Chart]) -> str:
    if not charts:
        return '<p class="muted">No metric records (metrics.jsonl is missing or empty).</p>'
    return '<div class="charts">' + "".join(
        f'<div class="chart"><h3>{esc(c.title)}</h3><img alt="{esc(c.title)}" src="{c.image}">'
        f'{f"<p>{esc(c.caption)}</p>" if c.caption else ""}</div>' for c in charts) + "</div>"


def _counts(counts: dict) -> str:
    return "<br>".join(f"{_number(n)} {esc(name)}" for name, n in counts.items()) or "0"


def data_section(run: RunFiles) -> str:
    """Per dataset what was read, kept, truncated and skipped (with the first place of each skip reason)."""
    reports = run.summary.get("data")
    out = ["<h3>Data</h3>"]
    if not reports:
        out.append('<p class="muted">summary.json records no data report.</p>')
    tables = [r for r in reports or [] if isinstance(r, dict)]
    if tables:
        with_media = any(r.get("media") or r.get("media_cut") for r in tables)
        rows = []
        for r in tables:
            examples = r.get("examples", {})
            skipped = "<br>".join(f"{_number(n)} {esc(reason)}" + (f' <span class="muted">(first at '
                                                                   f'{esc(examples[reason])})</span>'
                                                                   if reason in examples else "")
                                  for reason, n in r.get("skipped", {}).items()) or "0"
            media = [_counts(r.get("media", {})), _counts(r.get("media_cut", {}))] if with_media else []
            rows.append([esc(r.get("name", "")), _number(r.get("rows")), _number(r.get("samples")),
                         _number(r.get("truncated")), *media, skipped, _number(r.get("erased", 0)),
                         "yes" if r.get("from_cache") else "no"])
        head = ["dataset", "rows read", "samples", "truncated",
                *(["media kept", "media dropped by truncation"] if with_media else []),
                "skipped (first place)", "system prompts erased", "from tokenized cache"]
        out.append(_table(head, rows, {1, 2, 3, len(head) - 2}))
    lines = [r for r in reports or [] if not isinstance(r, dict)]
    if lines:
        out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
    batching = run.summary.get("skipped_while_batching")
    if batching:
        out.append("<p>Skipped while building batches: " + ", ".join(
            f"{_number(n)} ({esc(reason)})" for reason, n in batching.items()) + "</p>")
    elif batching is not None:
        out.append('<p class="muted">No sample was skipped while building batches.</p>')
    return "".join(out)


def trainable_section(run: RunFiles) -> str:
    rows = run.summary.get("trainable")
    if not rows:
        return ('<h3>Trainable parameters</h3><p class="muted">summary.json records no trainable-parameter table '
                "(the run is older than the report; train.log has it).</p>")
    total_t, total = sum(r["trainable"] for r in rows), sum(r["total"] for r in rows)
    body = [[esc(r["component"]), esc(r["method"]), _number(r["trainable"]), _number(r["total"]),
             f"{100 * r['trainable'] / max(r['total'], 1):.2f} %"] for r in rows]
    body.append(["<b>all</b>", "", f"<b>{_number(total_t)}</b>", f"<b>{_number(total)}</b>",
                 f"<b>{100 * total_t / max(total, 1):.2f} %</b>"])
    return "<h3>Trainable parameters</h3>" + _table(["component", "method", "trainable", "total", "trainable share"],
                                                    body, {2, 3, 4})


def other_figures(run: RunFiles) -> str:
    rest = {k: v for k, v in run.summary.items() if k not in _SHOWN}
    if not rest:
        return ""
    rows = [[esc(k), _number(v) if isinstance(v, (int, float, str, bool)) or v is None
             else f"<code>{esc(json.dumps(v, default=str))}</code>"] for k, v in rest.items()]
    return "<h3>Other figures (summary.json)</h3>" + _table(["key", "value"], rows)


def run_body(run: RunFiles) -> str:
    config = run.config
    what = [("task", config.get("task", "sft")), ("model", (config.get("model") or {}).get("name", "?")),
            ("method", (config.get("method") or {}).get("name", "?"))]
    return "".join([
        '<p class="muted">' + " · ".join(f"{esc(k)} <b>{esc(v)}</b>" for k, v in what) + "</p>",
        _figures(headline(run)), _charts(run_charts(run)), data_section(run), trainable_section(run),
        other_figures(run),
    ])


# --------------------------------------------------------------------------- several stages


def forgetting_section(forgetting: Forgetting) -> str:
    def cell(value) -> str:
        return '<span class="muted">–</span>' if value is None else _number(value)

    rows = [[esc(stage)] + [cell(forgetting.table.get(stage, {}).get(name)) for name in forgetting.sets]
            for stage in forgetting.stages]
    chart = forgetting_chart(forgetting)
    return (f"<h2>Forgetting: {esc(forgetting.metric)}</h2>"
            f'<p class="muted">Each row: every set evaluated after that stage (forgetting.json).</p>'
            + _table(["after stage", *forgetting.sets], rows, set(range(1, len(forgetting.sets) + 1)))
            + _charts([chart]))


def stages_overview(run: RunFiles) -> str:
    rows = []
    for stage in run.stages:
        evals = stage.series("eval_loss")
        rows.append([esc(stage.name), esc(stage.config.get("task", "sft")),
                     esc((stage.config.get("method") or {}).get("name", "?")),
                     _number(stage.summary.get("steps", stage.records[-1]["step"] if stage.records else None)),
                     _number(stage.summary.get("final_loss")), _number(evals.values[-1]) if evals.values else ""])
    return "<h2>Stages</h2>" + _table(["stage", "task", "method", "steps", "final loss", "last eval loss"], rows,
                                      {3, 4, 5})


# --------------------------------------------------------------------------- samples


def _media(views: list[MediaView]) -> str:
    out = []
    for v in views:
        if v.kind == "audio":
            body = f'<audio controls preload="none" src="{v.url}"></audio>'
        elif v.kind == "problem":
            body = f'<span class="problem">{esc(v.caption)}</span>'
        else:
            body = f'<img alt="{esc(v.caption)}" src="{v.url}">'
        out.append(f"<figure>{body}<figcaption>{esc(v.caption) if v.kind != 'problem' else ''}</figcaption></figure>")
    return f'<div class="media">{"".join(out)}</div>' if out else ""


_EMPTY = '<span class="muted">(empty: the first token generated was a stop token, or only whitespace)</span>'


def _conversation(sample: ConversationSample, number: int) -> str:
    return (f'<div class="sample"><h3>{number}. <span class="muted">{esc(sample.where)}</span></h3>'
            + _media(sample.media) + '<div class="cols">'
            f"<div><h4>Prompt</h4><pre>{esc(sample.prompt)}</pre></div>"
            f'<div><h4>Model (final/, greedy)</h4><pre class="answer">{esc(sample.answer) or _EMPTY}</pre></div>'
            f'<div><h4>Reference</h4><pre class="reference">{esc(sample.reference)}</pre></div></div></div>')


def _edit(sample: EditSample, number: int) -> str:
    cells = "".join(f'<div><h4>{title}</h4><img alt="{title}" src="{url}"></div>'
                    for title, url in (("Input", sample.before), ("Reference edit", sample.reference),
                                       ("Model (final/)", sample.output)))
    return (f'<div class="sample edit"><h3>{number}. {esc(sample.instruction)} '
            f'<span class="muted">({esc(sample.where)})</span></h3><div class="cols">{cells}</div></div>')


def samples_section(section: SampleSection) -> str:
    out = ["<h2>Validation samples</h2>"]
    if section.note:
        out.append(f'<p class="note">{esc(section.note)}</p>')
    for i, sample in enumerate(section.samples, start=1):
        out.append(_conversation(sample, i) if isinstance(sample, ConversationSample) else _edit(sample, i))
    return "".join(out)


# --------------------------------------------------------------------------- the page


def render_page(run: RunFiles, samples: SampleSection | None, *, generated: str) -> str:
    parts = [f"<h1>Run report: {esc(run.name)}</h1>",
             f'<p class="muted">{esc(run.path.resolve())} · written {esc(generated)} by mmtune report</p>']
    if run.stages:
        parts.append(stages_overview(run))
    if run.forgetting is not None:
        parts.append(forgetting_section(run.forgetting))
    if run.records or run.summary or not run.stages:
        parts += ["<h2>Training</h2>" if not run.stages else "<h2>Whole run</h2>", run_body(run)]
    for i, stage in enumerate(run.stages, start=1):
        parts += [f"<h2>Stage {i}: {esc(stage.name)}</h2>", run_body(stage)]
    if samples is not None:
        parts.append(samples_section(samples))
    return ("<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>mmtune report: {esc(run.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")
