"""``esmfuzz report RUN_DIR``: a soak run's ``statistics.json`` as one HTML page.

The page is self-contained: every chart is inline SVG drawn here, with no JavaScript and
no network, so it opens the same from a CI artefact, a copied run directory or an
air-gapped machine. Partial statistics (a run still going, a process that has not
written yet) are drawn with what is there, never refused.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from urllib.parse import quote

from esmfuzz.charts import (
    Target,
    as_dicts,
    as_int,
    as_mapping,
    as_number,
    clip_text,
    higher_is_better,
    margin_chart,
    rate_chart,
    reach_chart,
    read_targets,
    strip_chart,
)
from esmfuzz.errors import EsmfuzzError
from esmfuzz.soak import known_again, not_run
from esmfuzz.svg import (
    FAIL,
    INK,
    PASS,
    clock,
    count_text,
    empty_figure,
    escape,
    figure_box,
    legend_box,
    plural,
    signed,
    swatch,
    when,
)

__all__ = ["ReportError", "render_report", "write_report"]


class ReportError(EsmfuzzError, ValueError):
    """A run directory or ``statistics.json`` that cannot be reported; the message names it."""


# -- reading -----------------------------------------------------------------------------

def write_report(run_dir, out=None) -> Path:
    """Render ``RUN_DIR/statistics.json`` to ``out`` (``RUN_DIR/report.html``), atomically, so
    a browser refreshing the page during a live run never sees half of it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is not a directory" if run_dir.exists() else "does not exist"
        raise ReportError(f"run directory {str(run_dir)!r} {what}")
    stats = _load(run_dir / "statistics.json")
    out = Path(out) if out is not None else run_dir / "report.html"
    text = render_report(stats, run_dir=run_dir)
    part = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        part.write_text(text, encoding="utf-8")
        os.replace(part, out)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise ReportError(f"cannot write the report {str(out)!r}: {exc.strerror or exc}") from exc
    return out


def _load(path: Path) -> dict:
    if not path.is_file():
        raise ReportError(f"{path} does not exist: is {str(path.parent)!r} a soak run directory? "
                          f"(esmfuzz soak writes statistics.json within a minute of starting)")
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ReportError(f"{path} is empty")
        stats = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                          f"{exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not isinstance(stats, dict):
        raise ReportError(f"{path}: expected a JSON object with 'run' and 'processes', "
                          f"found {_json_type(stats)}")
    if stats.get("schema", 1) != 1:
        raise ReportError(f"{path}: schema {stats['schema']!r} is not supported "
                          f"(this esmfuzz reads schema 1)")
    for key, kind in (("run", dict), ("processes", list)):
        if stats.get(key) is not None and not isinstance(stats[key], kind):
            raise ReportError(f"{path}: {key!r} must be a JSON "
                              f"{'object' if kind is dict else 'array'}, "
                              f"found {_json_type(stats[key])}")
    return stats


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# -- page ----------------------------------------------------------------------------------

def render_report(stats: dict, *, run_dir: Path) -> str:
    """The page for one run's statistics; ``run_dir`` names it and anchors relative paths."""
    run = as_mapping(stats.get("run"))
    processes = as_dicts(stats.get("processes"))
    targets = read_targets(processes)
    failures = sorted((f for p in processes for f in as_dicts(p.get("failures"))),
                      key=lambda f: as_number(f.get("t")) or 0.0)
    starts = [as_number(p.get("started")) for p in processes]
    starts += [as_number(s.get("t")) for p in processes for s in as_dicts(p.get("timeline"))[:1]]
    t0 = as_number(run.get("started")) or min((s for s in starts if s is not None), default=0.0)
    sections = [
        _header(run, processes, targets, failures, run_dir, t0),
        _section("Targets", "targets", _target_table(targets)),
        _section("Metric distributions against their bounds", "metrics", _metrics(targets)),
        _section("Worst margin over time", "margin",
                 figure_box("Worst margin so far per target (minimum over processes)",
                         margin_chart(processes, t0, failures),
                         "Margin is the normalised slack to the bound: 1 is far from it, 0 is on "
                         "it, below 0 fails. Colour is the property, dash the length stratum.")),
        _section("Throughput", "rate",
                 figure_box("Examples per second, per worker",
                         rate_chart(processes, t0),
                         "All targets of a process together, from its timeline snapshots "
                         "(~30 s apart, averaged over longer windows in a long run). One line "
                         "per round of each worker.")),
        _section("Reach into the input space", "reach", reach_chart(processes)),
        _section(f"Failures ({len(failures)})", "failures",
                 _failure_table(failures, t0, run_dir, known_again(processes))),
    ]
    title = f"esmfuzz report: {Path(str(run.get('run_dir') or run_dir)).name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>'
            + "".join(sections)
            + f'<footer>Written by esmfuzz report from '
              f'{escape(str(Path(run_dir) / "statistics.json"))}.</footer>'
            + "</main></body></html>\n")


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def _distinct(processes: list[dict], key: str) -> str:
    values = sorted({str(p[key]) for p in processes if p.get(key) not in (None, "")})
    return ", ".join(values) or "–"


def _header(run: dict, processes: list[dict], targets: list[Target], failures: list[dict],
            run_dir: Path, t0: float) -> str:
    state = str(run.get("state") or "unknown")
    examples = sum(t.examples for t in targets)
    updated = as_number(run.get("updated")) or max(
        (u for p in processes if (u := as_number(p.get("updated"))) is not None), default=None)
    elapsed = as_number(run.get("elapsed"))
    if elapsed is None and updated and t0:
        elapsed = updated - t0
    duration = as_number(run.get("duration"))
    rate = examples / elapsed if elapsed else None
    workers = str(run.get("workers") or "?")
    signatures = len({f.get("signature") for f in failures})
    again = known_again(processes)
    still = (f"still failing: {plural(len(again), 'known bug')} "
             f"({', '.join(escape(i['case'] or s) for s, i in sorted(again.items()))})"
             if again else "")
    missing = not_run(run, processes)
    unrun = (f'<div class="verdict idle">{len(missing)} of {len(run.get("targets", []))} '
             f'targets did not run: {escape(", ".join(missing))}</div>' if missing else "")
    if failures:
        verdict = (f'<div class="verdict fail">{plural(len(failures), "failure")} saved, '
                   f'{plural(signatures, "distinct signature")}: '
                   f'<a href="#failures">see the cases</a>'
                   f'{"; " + still if still else ""}</div>')
    elif again:
        verdict = f'<div class="verdict fail">No new failure saved; {still}</div>'
    elif examples:
        verdict = (f'<div class="verdict ok">No failures in {examples:,} examples over '
                   f'{len(targets)} targets</div>')
    else:
        verdict = '<div class="verdict idle">No examples recorded yet</div>'
    verdict += unrun
    done = min(elapsed / duration, 1.0) if elapsed is not None and duration else None
    progress = (f'<div class="bar"><span style="width:{100 * done:.1f}%"></span></div>'
                if done is not None else "")
    kpis = [
        ("Elapsed", clock(elapsed),
         f"of {clock(duration)} ({100 * done:.0f}%)" if done is not None else "", progress),
        ("Examples", count_text(examples), plural(len(targets), "target"), ""),
        ("Examples / s", f"{rate:.3g}" if rate else "–", "over the elapsed time", ""),
        ("Failures", str(len(failures)), plural(signatures, "signature"), ""),
        ("Rounds", str(as_int(run.get("rounds"))),
         f"{workers} worker{'' if workers == '1' else 's'}, "
         f"{plural(len(processes), 'process', 'es')}",
         ""),
    ]
    cards = "".join(
        f'<div class="kpi{" alarm" if name == "Failures" and failures else ""}">'
        f'<div class="k">{escape(name)}</div><div class="v">{escape(value)}</div>'
        f'<div class="s">{escape(sub)}</div>{extra}</div>'
        for name, value, sub, extra in kpis)
    args = run.get("pytest_args")
    meta = [
        ("Model", _distinct(processes, "model")),
        ("Device", _distinct(processes, "device")),
        ("Dtype", _distinct(processes, "dtype")),
        ("Packed implementation", _distinct(processes, "packed_impl")),
        ("Padded implementation", _distinct(processes, "padded_impl")),
        ("Profile", _distinct(processes, "profile")),
        ("Hosts", _distinct(processes, "host")),
        ("Started", when(t0 or None)),
        ("Updated", when(updated)),
        ("Database", str(run.get("database") or "none")),
        ("Corpus", str(run.get("corpus") or "–")),
        ("pytest arguments", " ".join(map(str, args)) if isinstance(args, list) and args
         else "–"),
    ]
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in meta)
    where = str(run.get("run_dir") or run_dir)
    return (f'<header><div class="titlebar"><h1>esmfuzz soak report</h1>'
            f'<span class="state {escape(state)}">{escape(state)}</span></div>'
            f'<div class="path">{escape(where)}</div>{verdict}'
            f'<div class="kpis">{cards}</div><dl class="meta">{rows}</dl></header>')


def _margin_cell(margin: float | None) -> str:
    kind = ("none" if margin is None else "bad" if margin < 0
            else "close" if margin < 0.1 else "good")
    return f'<td class="num"><span class="chip {kind}">{escape(signed(margin))}</span></td>'


def _target_table(targets: list[Target]) -> str:
    if not targets:
        return empty_figure("No target has run yet.")
    head = ("Target", "Metric", "Bound", "Examples", "Examples / s", "Failing", "Seen again",
            "Worst margin")
    rows = []
    for t in targets:
        bound = ("–" if t.threshold is None
                 else f"{'>' if t.higher_is_better else '≤'} {t.threshold:.6g}")
        rate = f"{t.examples / t.seconds:.3g}" if t.seconds > 0 else "–"
        failing = f'<span class="chip bad">{t.failing}</span>' if t.failing else "0"
        rows.append(f"<tr><td class='mono'>{escape(t.name)}</td><td>{escape(t.metric or '–')}</td>"
                    f"<td class='num'>{escape(bound)}</td><td class='num'>{t.examples:,}</td>"
                    f"<td class='num'>{escape(rate)}</td><td class='num'>{failing}</td>"
                    f"<td class='num'>{t.seen_again:,}</td>{_margin_cell(t.worst_margin)}</tr>")
    return _table(head, rows)


def _table(head, rows: list[str], widths=()) -> str:
    cols = "".join(f'<col style="width:{w}%">' for w in widths)
    fixed = ' class="fixed"' if widths else ""
    return (f'<div class="tablewrap"><table{fixed}><colgroup>{cols}</colgroup><thead><tr>'
            + "".join(f"<th>{escape(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _metrics(targets: list[Target]) -> str:
    groups: dict[str, list[Target]] = defaultdict(list)
    for t in targets:
        if t.values:
            groups[t.metric or "metric"].append(t)
    if not groups:
        return empty_figure("No metric values sampled yet.")
    figures = []
    for metric, group in groups.items():
        higher = higher_is_better(metric)
        rule = "larger is better, fails at or below" if higher else "smaller is better, fails above"
        figures.append(figure_box(f"{metric} ({rule} its bound)", strip_chart(metric, group)))
    legend = legend_box([
        (swatch(PASS, dot=True), "an example within its bound"),
        (swatch(FAIL, dot=True), "an example past its bound"),
        (swatch(INK, fill="#ffffff"), "quartiles and median"),
        (swatch(FAIL, "5 3"), "bound"),
        (swatch(FAIL, fill="#fbe3e3"), "failing side"),
    ])
    without = [t.name for t in targets if not t.values]
    note = (f'<p class="note">No metric values for {escape(", ".join(without))} '
            f'(pass/fail checks only, or not run yet).</p>' if without else "")
    return legend + "".join(figures) + note


def _case_link(case: str, run_dir: Path) -> str:
    if not case:
        return '<span class="muted">not saved</span>'
    path = Path(case)
    exists = (path if path.is_absolute() else Path(run_dir) / path).exists()
    href = path.as_uri() if path.is_absolute() else quote(case)
    missing = "" if exists else ' <span class="chip bad">missing</span>'
    return (f'<a href="{escape(href)}" title="{escape(case)}">{escape(path.name)}</a>'
            f'<div class="muted small">{escape(clip_text(str(path.parent), 60))}</div>{missing}')


def _pattern(text: str) -> str:
    if len(text) <= 90:
        return escape(text)
    return f"<details><summary>{escape(text[:60])}…</summary>{escape(text)}</details>"


def _failure_table(failures: list[dict], t0: float, run_dir: Path,
                   again: dict[str, dict]) -> str:
    if again:
        rows = [f"<li>{escape(sig)}: {item['count']} example(s) in "
                f"{escape(', '.join(item['targets']))}; case {escape(item['case'] or '-')}</li>"
                for sig, item in sorted(again.items())]
        still = (f'<div class="empty">Still failing, known bugs seen again:<ul>{"".join(rows)}'
                 f'</ul></div>')
    else:
        still = ""
    if not failures:
        return still or '<div class="empty ok">✓ No failures saved in this run.</div>'
    head = ("Time", "Target", "Signature", "Layer pattern", "Status", "Case")
    rows = []
    for f in failures:
        t = as_number(f.get("t"))
        since = f"+{clock(t - t0)}" if t is not None and t0 else ""
        rows.append(
            f"<tr><td>{escape(since)}<div class='muted small'>{escape(when(t))}</div></td>"
            f"<td class='mono'>{escape(str(f.get('target') or '–')).replace('[', '<wbr>[')}</td>"
            f"<td>{escape(str(f.get('signature') or '–')).replace(',', ',<wbr>')}</td>"
            f"<td class='mono small'>{_pattern(str(f.get('pattern') or '–'))}</td>"
            f"<td><span class='chip close'>{escape(str(f.get('status') or '–'))}</span></td>"
            f"<td>{_case_link(str(f.get('case') or ''), run_dir)}</td></tr>")
    return _table(head, rows, widths=(12, 17, 29, 15, 7, 20)) + still


_CSS = """
:root{--ink:#1f2933;--muted:#616e7c;--line:#e4e7eb;--bg:#f3f5f8;--card:#fff;--fail:#d64545;
--ok:#2f855a;--warn:#b7791f;--blue:#4e79a7}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 20px 40px}
header,section{background:var(--card);border-radius:10px;padding:20px 24px;margin-bottom:18px;
box-shadow:0 1px 3px rgba(15,23,42,.08),0 1px 2px rgba(15,23,42,.04)}
h1{font-size:22px;margin:0}
h2{font-size:17px;margin:0 0 12px;padding-bottom:8px;border-bottom:1px solid var(--line)}
.titlebar{display:flex;align-items:center;gap:12px}
.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--muted);
margin:4px 0 12px;word-break:break-all}
.state{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.05em;
padding:3px 10px;border-radius:999px;background:#e2e8f0;color:#334155}
.state.running{background:#dbeafe;color:#1e40af}.state.finished{background:#dcfce7;color:#166534}
.state.stopped{background:#fef3c7;color:#92400e}
.verdict{padding:10px 14px;border-radius:8px;font-weight:600;margin-bottom:14px}
.verdict.fail{background:#fdecec;color:#9b1c1c;border-left:4px solid var(--fail)}
.verdict.ok{background:#e9f7ef;color:#1e6b43;border-left:4px solid var(--ok)}
.verdict.idle{background:#f1f5f9;color:var(--muted);border-left:4px solid #94a3b8}
.kpis{display:grid;grid-template-columns:repeat(5,1fr);gap:12px;margin-bottom:14px}
.kpi{border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.kpi .k{font-size:12px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
.kpi .v{font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.kpi .s{font-size:12px;color:var(--muted)}
.kpi.alarm{border-color:#f5b5b5;background:#fff7f7}.kpi.alarm .v{color:var(--fail)}
.bar{height:6px;background:var(--line);border-radius:3px;margin-top:6px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--blue)}
.meta{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:4px 14px;
margin:0;font-size:13px}
.meta dt{color:var(--muted)}.meta dd{margin:0;word-break:break-all}
figure{margin:0 0 16px}
figcaption{font-weight:600;margin-bottom:4px}
.note{color:var(--muted);font-size:13px;margin:2px 0 8px}
svg.chart{display:block;max-width:100%;height:auto;font-family:inherit}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:8px 24px}
.legend{display:flex;flex-wrap:wrap;gap:6px 16px;font-size:12px;color:var(--muted);
margin:6px 0 10px}
.legend span{display:inline-flex;align-items:center;gap:5px}
.swatch{display:inline-block;vertical-align:middle}
.grid{stroke:var(--line);stroke-width:1}
.axis{stroke:#9aa5b1;stroke-width:1}
.tick{font-size:11px;fill:var(--muted);font-variant-numeric:tabular-nums}
.axis-label{font-size:12px;fill:#3e4c59;font-weight:600}
.rowlabel{font-size:12px;fill:var(--ink);font-family:ui-monospace,SFMono-Regular,Menlo,
Consolas,monospace}
.side{font-size:11.5px;fill:var(--muted)}
text.bad{font-size:11.5px;fill:var(--fail);font-weight:600}
.band{fill:#f8fafc}
.failzone{fill:#fbe3e3;opacity:.7}
.bound{stroke:var(--fail);stroke-width:2;stroke-dasharray:5 3}
.zero{stroke:var(--ink);stroke-width:1.5}
.zone{font-size:11px;fill:#9b1c1c;paint-order:stroke;stroke:#fcecec;stroke-width:4px}
.failmark{fill:var(--fail)}.failline{stroke:var(--fail);stroke-width:1;opacity:.25}
.box{fill:#fff;fill-opacity:.55;stroke:var(--ink);stroke-width:1.3}
.median{stroke:var(--ink);stroke-width:2.5}
.whisker{stroke:var(--ink);stroke-width:1;opacity:.6}
.tablewrap{overflow-x:auto}
summary{cursor:pointer}
table{border-collapse:collapse;width:100%;font-size:13px}
table.fixed{table-layout:fixed}table.fixed td{overflow-wrap:anywhere}
th{text-align:left;font-weight:600;color:var(--muted);border-bottom:2px solid var(--line);
padding:6px 10px;white-space:nowrap}
td{border-bottom:1px solid var(--line);padding:6px 10px;vertical-align:top}
tbody tr:hover{background:#f8fafc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.small{font-size:12px}.muted{color:var(--muted)}
.chip{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600}
.chip.good{background:#e9f7ef;color:#1e6b43}.chip.close{background:#fef3c7;color:#92400e}
.chip.bad{background:#fdecec;color:#9b1c1c}.chip.none{background:#f1f5f9;color:var(--muted)}
a{color:#2563eb;text-decoration:none}a:hover{text-decoration:underline}
.empty{padding:22px;text-align:center;color:var(--muted);background:#f8fafc;
border:1px dashed #cbd2d9;border-radius:8px}
.empty.ok{color:#1e6b43;background:#f0faf4;border-color:#9ae6b4;font-weight:600}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:8px}
@media (max-width:900px){.kpis{grid-template-columns:repeat(2,1fr)}.grid2{grid-template-columns:1fr}
.meta{grid-template-columns:max-content 1fr}}
"""
