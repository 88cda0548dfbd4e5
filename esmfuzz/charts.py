"""The soak report's charts, from a run's per-process statistics: metric values per target,
margins over time, throughput and the reach into the input space (:mod:`esmfuzz.report`)."""

from __future__ import annotations

import math
import random
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from esmfuzz.svg import (
    DASHES,
    FAIL,
    PASS,
    SERIES,
    Frame,
    Scale,
    clock,
    count_text,
    empty_figure,
    escape,
    figure_box,
    fmt,
    legend_box,
    nice,
    signed,
    swatch,
    time_ticks,
    x_axis,
    y_axis,
)

STRATA = ("short", "medium", "long", "very_long", "crowded", "mixed")
DOTS = 600
"""Dots drawn per target: the box is computed from every sampled value, the dots show
the shape without making the page heavy."""
RARE = ("X", "B", "U", "Z", "O", "<mask>")
"""Rare residues and the mask; zero counts are drawn too, since a never-drawn residue is
exactly what the reach plot is for (:data:`esmfuzz.alphabet.RARE_RESIDUES`)."""


def as_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def as_int(value) -> int:
    number = as_number(value)
    return int(number) if number is not None else 0


def as_dicts(items) -> list[dict]:
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def as_mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class Target:
    name: str
    metric: str = ""
    threshold: float | None = None
    examples: int = 0
    failing: int = 0
    seen_again: int = 0
    worst_margin: float | None = None
    seconds: float = 0.0
    values: list[float] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return higher_is_better(self.metric)

    def fails(self, value: float) -> bool:
        if self.threshold is None:
            return False
        return value <= self.threshold if self.higher_is_better else value > self.threshold


def target_order(name: str) -> tuple:
    prop, _, rest = name.partition("[")
    stratum = rest.rstrip("]")
    rank = STRATA.index(stratum) if stratum in STRATA else len(STRATA)
    return prop, rank, stratum


def read_targets(processes: list[dict]) -> list[Target]:
    """Each target over every process and round that ran it."""
    out: dict[str, Target] = {}
    for proc in processes:
        for name, row in as_mapping(proc.get("targets")).items():
            if not isinstance(row, dict):
                continue
            t = out.setdefault(str(name), Target(str(name)))
            t.metric = t.metric or str(row.get("metric") or "")
            t.threshold = as_number(row.get("threshold")) if t.threshold is None else t.threshold
            t.examples += as_int(row.get("examples"))
            t.failing += as_int(row.get("failing"))
            t.seen_again += as_int(row.get("seen_again", row.get("known")))  # "known" before v0.2
            margin = as_number(row.get("worst_margin"))
            if margin is not None and (t.worst_margin is None or margin < t.worst_margin):
                t.worst_margin = margin
            t.seconds += as_number(row.get("seconds")) or 0.0  # its own time, as soak's table
            values = row.get("values") if isinstance(row.get("values"), list) else []
            t.values += [v for v in map(as_number, values) if v is not None]
    return sorted(out.values(), key=lambda t: target_order(t.name))


# -- charts --------------------------------------------------------------------------------

def quantile(ordered: list[float], q: float) -> float:
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def strip_chart(metric: str, targets: list[Target]) -> str:
    """One row per target: the sampled values as dots, their quartiles as a box, the bound
    as a dashed red line and its failing side shaded."""
    higher = higher_is_better(metric)
    points = [v for t in targets for v in t.values]
    points += [t.threshold for t in targets if t.threshold is not None]
    kind, lo, hi = strip_domain(points, higher)
    row = 32
    frame = Frame(1100, 14 + row * len(targets) + 50, left=220, right=200, top=14)
    x = Scale(lo, hi, frame.left, frame.x1, kind)
    ticks = x.ticks()
    scale_note = {"log": " (log scale)", "cosine": " (log scale of 1 − value)"}.get(kind, "")
    out = [frame.open(f"{metric} per target against its bound")]
    for i, t in enumerate(targets):
        top = frame.top + i * row
        mid = top + row / 2
        if i % 2:
            out.append(f'<rect class="band" x="{frame.left}" y="{top}" '
                       f'width="{frame.x1 - frame.left}" height="{row}"/>')
        if t.threshold is not None:
            bound = x(t.threshold)
            edge = frame.left if higher else frame.x1
            out.append(f'<rect class="failzone" x="{min(bound, edge):.1f}" y="{top + 2}" '
                       f'width="{abs(edge - bound):.1f}" height="{row - 4}"/>')
        out.append(f'<text class="rowlabel" x="{frame.left - 10}" y="{mid + 4:.1f}" '
                   f'text-anchor="end">{escape(clip_text(t.name, 30))}'
                   f'<title>{escape(t.name)}</title></text>')
    out += x_axis(frame, x, ticks, x.label,
                   f"{metric}{scale_note}: {'larger' if higher else 'smaller'} is better")
    for i, t in enumerate(targets):
        top = frame.top + i * row
        mid = top + row / 2
        if t.threshold is not None:
            bound = x(t.threshold)
            out.append(f'<line class="bound" x1="{bound:.1f}" x2="{bound:.1f}" y1="{top + 2}" '
                       f'y2="{top + row - 2}"><title>bound {t.threshold:.6g}</title></line>')
        out += strip_row(t, x, mid, row)
        margin_class = "bad" if t.worst_margin is not None and t.worst_margin < 0 else "side"
        out.append(f'<text class="{margin_class}" x="{frame.x1 + 10}" y="{mid + 4:.1f}">'
                   f'{count_text(t.examples)} ex · margin {escape(signed(t.worst_margin))}</text>')
    out.append("</svg>")
    return "".join(out)


def strip_domain(points: list[float], higher: bool) -> tuple[str, float, float]:
    """Log when the values span two decades or more (of the distance to 1 for cosines),
    with whole decades at both ends; linear otherwise."""
    if higher:
        gaps = [1 - v for v in points]
        small = [g for g in gaps if g > 0]
        if small and min(gaps) >= 0 and max(gaps) <= 1:
            near = max(10.0 ** math.floor(math.log10(min(small))), 1e-9)
            far = 10.0 ** math.ceil(math.log10(max(gaps)))
            if far / near >= 10 and max(gaps) / min(small) >= 10:
                return "cosine", 1 - far, 1 - near
    else:
        positive = [v for v in points if v > 0]
        if len(positive) == len(points) and max(positive) / min(positive) >= 100:
            return ("log", 10.0 ** math.floor(math.log10(min(positive))),
                    10.0 ** math.ceil(math.log10(max(positive))))
    lo, hi = min(points), max(points)
    pad = (hi - lo) * 0.04 or abs(hi) * 0.01 or 1.0
    return "linear", *nice(lo - pad, hi + pad)


def strip_row(t: Target, x: Scale, mid: float, row: float) -> list[str]:
    if not t.values:
        return [f'<text class="side" x="{x.start + 8}" y="{mid + 4:.1f}">'
                f'no values sampled</text>']
    rng = random.Random(zlib.crc32(t.name.encode()))
    shown = t.values if len(t.values) <= DOTS else rng.sample(t.values, DOTS)
    paths = {False: [], True: []}
    for v in shown:
        paths[t.fails(v)].append(f"M{x(v):.1f} {mid + rng.uniform(-0.3, 0.3) * row:.1f}h0")
    out = []
    for failing, color, opacity in ((False, PASS, 0.35), (True, FAIL, 0.85)):
        if paths[failing]:
            out.append(f'<path d="{"".join(paths[failing])}" stroke="{color}" '
                       f'stroke-opacity="{opacity}" stroke-width="4.5" stroke-linecap="round"/>')
    ordered = sorted(t.values)
    q1, median, q3 = (quantile(ordered, q) for q in (0.25, 0.5, 0.75))
    low, high = x(ordered[0]), x(ordered[-1])
    half = row * 0.32
    out.append(f'<line class="whisker" x1="{low:.1f}" x2="{high:.1f}" y1="{mid:.1f}" '
               f'y2="{mid:.1f}"/>')
    out.append(f'<rect class="box" x="{x(q1):.1f}" y="{mid - half:.1f}" '
               f'width="{max(x(q3) - x(q1), 1):.1f}" height="{2 * half:.1f}">'
               f'<title>{escape(t.name)}: median {escape(fmt(median))}, '
               f'quartiles {escape(fmt(q1))} to '
               f'{escape(fmt(q3))}, range {escape(fmt(ordered[0]))} to {escape(fmt(ordered[-1]))}, '
               f'{len(ordered)} values</title></rect>')
    out.append(f'<line class="median" x1="{x(median):.1f}" x2="{x(median):.1f}" '
               f'y1="{mid - half:.1f}" y2="{mid + half:.1f}"/>')
    return out


def clip_text(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def series_styles(targets: list[str]) -> dict[str, tuple[str, str]]:
    """Colour by property, dash by stratum: twenty targets stay tellable apart."""
    props = sorted({target_order(n)[0] for n in targets})
    out = {}
    for name in targets:
        prop, rank, _ = target_order(name)
        out[name] = (SERIES[props.index(prop) % len(SERIES)], DASHES[rank % len(DASHES)])
    return out


def margin_chart(processes: list[dict], t0: float, failures: list[dict]) -> str:
    """The worst margin of each target so far, over all processes; below 0 is a failure."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for proc in processes:
        for snap in as_dicts(proc.get("timeline")):
            t = as_number(snap.get("t"))
            for name, margin in as_mapping(snap.get("worst_margin")).items():
                if t is not None and as_number(margin) is not None:
                    points[str(name)].append((t - t0, float(margin)))
    if not points:
        return empty_figure("No margins recorded yet: the first timeline snapshot comes ~30 s into "
                      "a round.")
    series = {}
    for name, pts in points.items():
        pts.sort()
        running, low = [], math.inf
        for t, m in pts:
            low = min(low, m)
            running.append((t, low))
        series[name] = running
    values = [m for pts in series.values() for _, m in pts]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    lo = -1.0 if lo >= -1 else -(10.0 ** math.ceil(math.log10(-lo)))
    hi = 1.0 if hi <= 1 else 10.0 ** math.ceil(math.log10(hi))
    marks = [t - t0 for f in failures if (t := as_number(f.get("t"))) is not None and t >= t0]
    span = max([t for pts in series.values() for t, _ in pts] + marks + [1.0])
    frame = Frame(1100, 380, left=70, right=24, top=16)
    x = Scale(0, span, frame.left, frame.x1)
    y = Scale(lo, hi, frame.y1, frame.top, "symlog")
    zero = y(0)
    out = [frame.open("worst margin over time"),
           f'<rect class="failzone" x="{frame.left}" y="{zero:.1f}" '
           f'width="{frame.x1 - frame.left}" height="{frame.y1 - zero:.1f}"/>']
    out += x_axis(frame, x, time_ticks(span), clock, "time since the run started")
    out += y_axis(frame, y, y.ticks(), y.label, "worst margin so far (symlog)")
    out.append(f'<line class="zero" x1="{frame.left}" x2="{frame.x1}" y1="{zero:.1f}" '
               f'y2="{zero:.1f}"/>')
    out.append(f'<text class="zone" x="{frame.x1 - 6}" y="{zero + 15:.1f}" text-anchor="end">'
               f'below 0: fails its bound</text>')
    style = series_styles(list(series))
    for name in sorted(series, key=target_order):
        color, dash = style[name]
        pts = series[name]
        d = f"M{x(pts[0][0]):.1f} {y(pts[0][1]):.1f}" + "".join(
            f"H{x(t):.1f}V{y(m):.1f}" for t, m in pts[1:])
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" '
                   f'stroke-dasharray="{dash}"><title>{escape(name)}</title></path>')
    for f in failures:
        t = as_number(f.get("t"))
        if t is not None and t >= t0:
            fx = x(t - t0)
            out.append(f'<line class="failline" x1="{fx:.1f}" x2="{fx:.1f}" y1="{frame.top}" '
                       f'y2="{frame.y1}"/><path class="failmark" d="M{fx:.1f} {frame.y1 - 1}'
                       f'l-5 -9h10z"><title>{escape(str(f.get("signature", "")))}</title></path>')
    out.append("</svg>")
    legend = [(swatch(*style[n]), n) for n in sorted(series, key=target_order)]
    if failures:
        legend.append((swatch(FAIL, mark=True), "a failure saved"))
    return "".join(out) + legend_box(legend)


def rates(proc: dict, window: float) -> list[tuple[float, float]]:
    """Examples per second over all targets, between timeline snapshots at least ``window``
    seconds apart, plotted mid-way: consecutive snapshots in a short run, smoothed in a
    night's run, whose 30 s rates are mostly noise."""
    out, before = [], None
    for snap in as_dicts(proc.get("timeline")):
        t = as_number(snap.get("t"))
        if t is None:
            continue
        counts = {k: as_int(v) for k, v in as_mapping(snap.get("examples")).items()}
        if before is None or t < before[0]:
            before = (t, counts)
        elif t > before[0] and t - before[0] >= window:
            done = sum(n - before[1].get(k, 0) for k, n in counts.items())
            out.append(((t + before[0]) / 2, max(done, 0) / (t - before[0])))
            before = (t, counts)
    return out


def rate_chart(processes: list[dict], t0: float) -> str:
    times = [t for p in processes for s in as_dicts(p.get("timeline"))
             if (t := as_number(s.get("t"))) is not None]
    window = (max(times, default=t0) - t0) / 90
    series = [(proc, rates(proc, window)) for proc in processes]
    series = [(p, pts) for p, pts in series if pts]
    if not series:
        return empty_figure("Not enough timeline snapshots yet: a rate needs two, ~30 s apart.")
    workers = sorted({str(p.get("worker", "?")) for p, _ in series},
                     key=lambda w: (len(w), w))
    color = {w: SERIES[i % len(SERIES)] for i, w in enumerate(workers)}
    span = max(t - t0 for _, pts in series for t, _ in pts)
    top = max(r for _, pts in series for _, r in pts)
    frame = Frame(1100, 320, left=70, right=24, top=16)
    x = Scale(0, max(span, 1.0), frame.left, frame.x1)
    y = Scale(*nice(0, top * 1.05 or 1.0), frame.y1, frame.top)
    out = [frame.open("examples per second over time, per worker")]
    out += x_axis(frame, x, time_ticks(max(span, 1.0)), clock, "time since the run started")
    out += y_axis(frame, y, y.ticks(), y.label, "examples / s")
    for proc, pts in series:
        worker = str(proc.get("worker", "?"))
        d = "".join(f"{'L' if i else 'M'}{x(t - t0):.1f} {y(r):.1f}"
                    for i, (t, r) in enumerate(pts))
        label = f"round {proc.get('round', '?')}, {worker}"
        out.append(f'<path d="{d}" fill="none" stroke="{color[worker]}" stroke-width="2" '
                   f'stroke-linejoin="round"><title>{escape(label)}</title></path>')
        if len(pts) == 1:
            out.append(f'<circle cx="{x(pts[0][0] - t0):.1f}" cy="{y(pts[0][1]):.1f}" r="3" '
                       f'fill="{color[worker]}"/>')
    out.append("</svg>")
    legend = [(swatch(color[w]), w) for w in workers]
    if window > 45:
        legend.append(("", f"(averaged over windows of at least {clock(window)})"))
    return "".join(out) + legend_box(legend)


def bin_order(label: str) -> tuple[float, str]:
    head = label.lstrip(">").split("-")[0]
    try:
        return float(head) + (0.5 if label.startswith(">") else 0), label
    except ValueError:
        return math.inf, label


def bar_chart(title: str, counts: list[tuple[str, int]], color: str) -> str:
    """Horizontal bars, so that bin labels such as 8193-16384 never collide."""
    if not counts:
        return figure_box(title, empty_figure("Nothing counted yet."))
    total = sum(n for _, n in counts) or 1
    row = 24
    frame = Frame(540, 10 + row * len(counts) + 8, left=96, right=118, top=8, bottom=8)
    x = Scale(0, max(n for _, n in counts) or 1, frame.left, frame.x1)
    out = [frame.open(title)]
    for i, (label, n) in enumerate(counts):
        top = frame.top + i * row
        mid = top + row / 2
        out.append(f'<text class="rowlabel" x="{frame.left - 8}" y="{mid + 4:.1f}" '
                   f'text-anchor="end">{escape(label)}</text>')
        width = x(n) - frame.left
        out.append(f'<rect x="{frame.left}" y="{top + 4}" width="{max(width, 0):.1f}" '
                   f'height="{row - 8}" rx="2" fill="{color}"><title>{escape(label)}: {n:,}</title>'
                   f'</rect>')
        text = f"{n:,} ({percent(n / total)})" if n else "never drawn"
        out.append(f'<text class="{"side" if n else "bad"}" x="{frame.left + width + 6:.1f}" '
                   f'y="{mid + 4:.1f}">{escape(text)}</text>')
    out.append(f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
               f'y2="{frame.y1}"/></svg>')
    return figure_box(title, "".join(out))


def percent(share: float) -> str:
    if share < 0.001:
        return "<0.1%"
    return f"{100 * share:.0f}%" if share >= 0.1 else f"{100 * share:.1f}%"


def reach_chart(processes: list[dict]) -> str:
    sums: dict[str, Counter] = defaultdict(Counter)
    layouts = with_mask = 0
    for proc in processes:
        cov = as_mapping(proc.get("reach", proc.get("coverage")))  # "coverage": before 2026-12-05
        for key in ("sequences_per_pack", "tokens_per_pack", "sequence_length",
                    "rare_and_mask_residues"):
            for label, n in as_mapping(cov.get(key)).items():
                sums[key][str(label)] += as_int(n)
        layouts += as_int(cov.get("layouts"))
        with_mask += as_int(cov.get("layouts_with_mask"))
    binned = [("Sequences per pack", "sequences_per_pack", SERIES[0]),
              ("Tokens per pack (with <cls> and <eos>)", "tokens_per_pack", SERIES[2]),
              ("Sequence length (residues)", "sequence_length", SERIES[3])]
    charts = [bar_chart(title, sorted(sums[key].items(), key=lambda kv: bin_order(kv[0])),
                         color) for title, key, color in binned]
    residues = sums["rare_and_mask_residues"]
    rare = [(r, residues.get(r, 0)) for r in RARE] if residues or layouts else []
    rare += sorted((r, n) for r, n in residues.items() if r not in RARE)
    charts.append(bar_chart("Rare residues and <mask> (residues drawn)", rare, SERIES[1]))
    share = f" ({percent(with_mask / layouts)})" if layouts else ""
    note = (f"{layouts:,} layouts checked (a variant layout counts too); "
            f"{with_mask:,} with a <mask>{share}. Summed over every process and round.")
    return f'<p class="note">{escape(note)}</p><div class="grid2">{"".join(charts)}</div>'


def higher_is_better(metric: str) -> bool:
    """As :mod:`esmfuzz.registry` declares the metric (a log with none: smaller is better)."""
    from esmfuzz.registry import metric as declared

    try:
        return declared(metric).higher_is_better
    except ValueError:
        return False
