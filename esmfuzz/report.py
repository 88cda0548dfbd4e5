"""``esmfuzz report RUN_DIR``: a soak run's ``statistics.json`` as one HTML page.

The page is self-contained: every chart is inline SVG drawn here, with no JavaScript and
no network, so it opens the same from a CI artefact, a copied run directory or an
air-gapped machine. Partial statistics (a run still going, a process that has not
written yet) are drawn with what is there, never refused.
"""

from __future__ import annotations

import html
import json
import math
import os
import random
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from esmfuzz.errors import EsmfuzzError

__all__ = ["write_report", "render_report"]

_STRATA = ("short", "medium", "long", "very_long", "crowded", "mixed")
_SERIES = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#86bcb6", "#bab0ac")
_DASHES = ("", "7 3", "2 3", "9 3 2 3", "1 2", "12 4")
_PASS, _FAIL, _INK = "#4e79a7", "#d64545", "#1f2933"
_DOTS = 600
"""Dots drawn per target: the box is computed from every sampled value, the dots show
the shape without making the page heavy."""
_RARE = ("X", "B", "U", "Z", "O", "<mask>")
"""Rare residues and the mask; zero counts are drawn too, since a never-drawn residue is
exactly what the reach plot is for (:data:`esmfuzz.alphabet.RARE_RESIDUES`)."""


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


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _dicts(items) -> list[dict]:
    return [x for x in items if isinstance(x, dict)] if isinstance(items, list) else []


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


@dataclass
class _Target:
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
        return _higher_is_better(self.metric)

    def fails(self, value: float) -> bool:
        if self.threshold is None:
            return False
        return value <= self.threshold if self.higher_is_better else value > self.threshold


def _order(name: str) -> tuple:
    prop, _, rest = name.partition("[")
    stratum = rest.rstrip("]")
    rank = _STRATA.index(stratum) if stratum in _STRATA else len(_STRATA)
    return prop, rank, stratum


def _targets(processes: list[dict]) -> list[_Target]:
    """Each target over every process and round that ran it."""
    out: dict[str, _Target] = {}
    for proc in processes:
        for name, row in _mapping(proc.get("targets")).items():
            if not isinstance(row, dict):
                continue
            t = out.setdefault(str(name), _Target(str(name)))
            t.metric = t.metric or str(row.get("metric") or "")
            t.threshold = _num(row.get("threshold")) if t.threshold is None else t.threshold
            t.examples += _int(row.get("examples"))
            t.failing += _int(row.get("failing"))
            t.seen_again += _int(row.get("seen_again", row.get("known")))  # "known" before v0.2
            margin = _num(row.get("worst_margin"))
            if margin is not None and (t.worst_margin is None or margin < t.worst_margin):
                t.worst_margin = margin
            t.seconds += _num(row.get("seconds")) or 0.0  # its own time, as soak's table
            values = row.get("values") if isinstance(row.get("values"), list) else []
            t.values += [v for v in map(_num, values) if v is not None]
    return sorted(out.values(), key=lambda t: _order(t.name))


# -- formatting ----------------------------------------------------------------------------

_e = html.escape
_SUPER = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _fmt(value: float) -> str:
    """Short and exact enough for a tick or a cell: 0.5, 12, 2×10⁵, 10⁻⁶."""
    if value == 0:
        return "0"
    size = abs(value)
    if 1e-3 <= size < 1e5:
        text = f"{value:.3g}"
        return (text if "e" not in text else f"{value:.0f}").replace("-", "−")
    exponent = math.floor(math.log10(size))
    mantissa = value / 10**exponent
    power = "10" + str(exponent).translate(_SUPER)
    if round(abs(mantissa), 2) == 1:
        return ("−" if value < 0 else "") + power
    return f"{mantissa:.2g}×{power}".replace("-", "−")


def _signed(value: float | None) -> str:
    if value is None:
        return "–"
    return ("+" if value > 0 else "") + _fmt(value)


def _plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n:,} {word}{'' if n == 1 else suffix}"


def _count(n: float) -> str:
    n = int(n)
    if abs(n) < 10_000:
        return f"{n:,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(max(seconds, 0)))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m) + [f"{s}s"] * bool(s)
    return " ".join(parts[:2]) or "0s"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


# -- scales and axes ------------------------------------------------------------------------

class _Scale:
    """Data to pixels: linear; log10; symmetric log (linear within ±1, where passing margins
    live, log beyond), so that margins from −10⁶ to 1 share an axis; or ``cosine``, log10 of
    the distance to 1, since cosines of 0.999 and 0.999999 differ as much as ratios do."""

    def __init__(self, lo: float, hi: float, start: float, end: float, kind: str = "linear"):
        self.lo, self.hi, self.kind = lo, hi, kind
        self.start, self.end = start, end
        self.a, self.b = self._t(lo), self._t(hi)
        if self.b == self.a:
            self.b = self.a + 1
        self.step = _step(hi - lo) if kind == "linear" else 0.0

    def _t(self, v: float) -> float:
        if self.kind == "log":
            return math.log10(max(v, self.lo))
        if self.kind == "cosine":
            return -math.log10(max(1 - v, 1 - self.hi))
        if self.kind == "symlog":
            return 2 * v if abs(v) <= 1 else math.copysign(2 + math.log10(abs(v)), v)
        return v

    def __call__(self, v: float) -> float:
        v = min(max(v, self.lo), self.hi)
        return self.start + (self._t(v) - self.a) / (self.b - self.a) * (self.end - self.start)

    def ticks(self) -> list[float]:
        lo, hi = self.lo, self.hi
        if self.kind == "linear":
            return _linear_ticks(lo, hi)
        if self.kind in ("log", "cosine"):
            log = self.kind == "log"
            e0, e1 = (round(math.log10(lo)), round(math.log10(hi))) if log else (
                round(math.log10(1 - hi)), round(math.log10(1 - lo)))
            every = max(1, math.ceil((e1 - e0) / 8))
            ticks = [10.0**e for e in range(e0, e1 + 1, every)]
            if e1 - e0 <= 2:
                ticks += [m * 10.0**e for e in range(e0, e1) for m in (2, 5)]
            return sorted(ticks if log else [1 - d for d in ticks])
        ticks = [t for t in (-1, -0.5, 0, 0.5, 1) if lo <= t <= hi]
        for sign, edge in ((-1, lo), (1, hi)):
            if abs(edge) > 1:
                top = round(math.log10(abs(edge)))
                every = max(1, math.ceil(top / 4))
                ticks += [sign * 10.0**e for e in range(top, 0, -every)]
        return sorted(ticks)

    def label(self, v: float) -> str:
        """A tick label with as many digits as its neighbours need to differ."""
        if self.kind == "cosine":
            return f"{v:.12f}".rstrip("0").rstrip(".")
        if self.kind == "linear" and v and 1e-4 <= abs(v) < 1e5:
            places = max(0, -math.floor(math.log10(self.step) + 1e-9))
            places += abs(self.step / 10 ** math.floor(math.log10(self.step)) - 2.5) < 1e-9
            return f"{v:.{places}f}".replace("-", "−")
        return _fmt(v)


def _step(span: float, count: int = 6) -> float:
    raw = span / count if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return mag * next(s for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * 0.999)


def _linear_ticks(lo: float, hi: float) -> list[float]:
    step = _step(hi - lo)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _nice(lo: float, hi: float) -> tuple[float, float]:
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    step = _step(hi - lo)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def _time_ticks(span: float) -> list[float]:
    steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
             86400, 172800, 604800)
    step = next((s for s in steps if span / s <= 8), steps[-1])
    return [k * step for k in range(int(span // step) + 1)]


@dataclass
class _Frame:
    """A chart's size and the margins around its plotting area, in SVG units."""

    width: float
    height: float
    left: float = 70
    right: float = 20
    top: float = 14
    bottom: float = 48

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def y1(self) -> float:
        return self.height - self.bottom

    def open(self, label: str) -> str:
        return (f'<svg class="chart" viewBox="0 0 {self.width:g} {self.height:g}" '
                f'width="{self.width:g}" height="{self.height:g}" role="img" '
                f'aria-label="{_e(label)}">')


def _x_axis(frame: _Frame, scale: _Scale, ticks, fmt, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{frame.left}" x2="{frame.x1}" y1="{frame.y1}" '
           f'y2="{frame.y1}"/>']
    for v in ticks:
        x = scale(v)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" '
                   f'y2="{frame.y1}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{frame.y1 + 16}" '
                   f'text-anchor="middle">{_e(fmt(v))}</text>')
    out.append(f'<text class="axis-label" x="{(frame.left + frame.x1) / 2:.1f}" '
               f'y="{frame.height - 8}" text-anchor="middle">{_e(label)}</text>')
    return out


def _y_axis(frame: _Frame, scale: _Scale, ticks, fmt, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
           f'y2="{frame.y1}"/>']
    for v in ticks:
        y = scale(v)
        out.append(f'<line class="grid" x1="{frame.left}" x2="{frame.x1}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{frame.left - 7}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_e(fmt(v))}</text>')
    middle = (frame.top + frame.y1) / 2
    out.append(f'<text class="axis-label" x="14" y="{middle:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {middle:.1f})">{_e(label)}</text>')
    return out


def _swatch(color: str, dash: str = "", *, dot: bool = False, fill: str = "",
            mark: bool = False) -> str:
    if dot:
        shape = f'<circle cx="14" cy="6" r="4" fill="{color}"/>'
    elif mark:
        shape = f'<path d="M14 11l-5 -9h10z" fill="{color}"/>'
    elif fill:
        shape = f'<rect x="2" y="1" width="24" height="10" fill="{fill}" stroke="{color}"/>'
    else:
        shape = (f'<line x1="1" y1="6" x2="27" y2="6" stroke="{color}" stroke-width="2.5" '
                 f'stroke-dasharray="{dash}"/>')
    return f'<svg class="swatch" width="28" height="12" viewBox="0 0 28 12">{shape}</svg>'


def _legend(items: list[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(
        f'<span>{swatch}{_e(label)}</span>' for swatch, label in items) + "</div>"


def _empty(text: str) -> str:
    return f'<div class="empty">{_e(text)}</div>'


def _figure(title: str, body: str, note: str = "") -> str:
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<figure><figcaption>{_e(title)}</figcaption>{note}{body}</figure>'


# -- charts --------------------------------------------------------------------------------

def _quantile(ordered: list[float], q: float) -> float:
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _strip_chart(metric: str, targets: list[_Target]) -> str:
    """One row per target: the sampled values as dots, their quartiles as a box, the bound
    as a dashed red line and its failing side shaded."""
    higher = _higher_is_better(metric)
    points = [v for t in targets for v in t.values]
    points += [t.threshold for t in targets if t.threshold is not None]
    kind, lo, hi = _strip_domain(points, higher)
    row = 32
    frame = _Frame(1100, 14 + row * len(targets) + 50, left=220, right=200, top=14)
    x = _Scale(lo, hi, frame.left, frame.x1, kind)
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
                   f'text-anchor="end">{_e(_clip(t.name, 30))}<title>{_e(t.name)}</title></text>')
    out += _x_axis(frame, x, ticks, x.label,
                   f"{metric}{scale_note}: {'larger' if higher else 'smaller'} is better")
    for i, t in enumerate(targets):
        top = frame.top + i * row
        mid = top + row / 2
        if t.threshold is not None:
            bound = x(t.threshold)
            out.append(f'<line class="bound" x1="{bound:.1f}" x2="{bound:.1f}" y1="{top + 2}" '
                       f'y2="{top + row - 2}"><title>bound {t.threshold:.6g}</title></line>')
        out += _strip_row(t, x, mid, row)
        margin_class = "bad" if t.worst_margin is not None and t.worst_margin < 0 else "side"
        out.append(f'<text class="{margin_class}" x="{frame.x1 + 10}" y="{mid + 4:.1f}">'
                   f'{_count(t.examples)} ex · margin {_e(_signed(t.worst_margin))}</text>')
    out.append("</svg>")
    return "".join(out)


def _strip_domain(points: list[float], higher: bool) -> tuple[str, float, float]:
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
    return "linear", *_nice(lo - pad, hi + pad)


def _strip_row(t: _Target, x: _Scale, mid: float, row: float) -> list[str]:
    if not t.values:
        return [f'<text class="side" x="{x.start + 8}" y="{mid + 4:.1f}">'
                f'no values sampled</text>']
    rng = random.Random(zlib.crc32(t.name.encode()))
    shown = t.values if len(t.values) <= _DOTS else rng.sample(t.values, _DOTS)
    paths = {False: [], True: []}
    for v in shown:
        paths[t.fails(v)].append(f"M{x(v):.1f} {mid + rng.uniform(-0.3, 0.3) * row:.1f}h0")
    out = []
    for failing, color, opacity in ((False, _PASS, 0.35), (True, _FAIL, 0.85)):
        if paths[failing]:
            out.append(f'<path d="{"".join(paths[failing])}" stroke="{color}" '
                       f'stroke-opacity="{opacity}" stroke-width="4.5" stroke-linecap="round"/>')
    ordered = sorted(t.values)
    q1, median, q3 = (_quantile(ordered, q) for q in (0.25, 0.5, 0.75))
    low, high = x(ordered[0]), x(ordered[-1])
    half = row * 0.32
    out.append(f'<line class="whisker" x1="{low:.1f}" x2="{high:.1f}" y1="{mid:.1f}" '
               f'y2="{mid:.1f}"/>')
    out.append(f'<rect class="box" x="{x(q1):.1f}" y="{mid - half:.1f}" '
               f'width="{max(x(q3) - x(q1), 1):.1f}" height="{2 * half:.1f}">'
               f'<title>{_e(t.name)}: median {_e(_fmt(median))}, quartiles {_e(_fmt(q1))} to '
               f'{_e(_fmt(q3))}, range {_e(_fmt(ordered[0]))} to {_e(_fmt(ordered[-1]))}, '
               f'{len(ordered)} values</title></rect>')
    out.append(f'<line class="median" x1="{x(median):.1f}" x2="{x(median):.1f}" '
               f'y1="{mid - half:.1f}" y2="{mid + half:.1f}"/>')
    return out


def _clip(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _style(targets: list[str]) -> dict[str, tuple[str, str]]:
    """Colour by property, dash by stratum: twenty targets stay tellable apart."""
    props = sorted({_order(n)[0] for n in targets})
    out = {}
    for name in targets:
        prop, rank, _ = _order(name)
        out[name] = (_SERIES[props.index(prop) % len(_SERIES)], _DASHES[rank % len(_DASHES)])
    return out


def _margin_chart(processes: list[dict], t0: float, failures: list[dict]) -> str:
    """The worst margin of each target so far, over all processes; below 0 is a failure."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for proc in processes:
        for snap in _dicts(proc.get("timeline")):
            t = _num(snap.get("t"))
            for name, margin in _mapping(snap.get("worst_margin")).items():
                if t is not None and _num(margin) is not None:
                    points[str(name)].append((t - t0, float(margin)))
    if not points:
        return _empty("No margins recorded yet: the first timeline snapshot comes ~30 s into "
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
    marks = [t - t0 for f in failures if (t := _num(f.get("t"))) is not None and t >= t0]
    span = max([t for pts in series.values() for t, _ in pts] + marks + [1.0])
    frame = _Frame(1100, 380, left=70, right=24, top=16)
    x = _Scale(0, span, frame.left, frame.x1)
    y = _Scale(lo, hi, frame.y1, frame.top, "symlog")
    zero = y(0)
    out = [frame.open("worst margin over time"),
           f'<rect class="failzone" x="{frame.left}" y="{zero:.1f}" '
           f'width="{frame.x1 - frame.left}" height="{frame.y1 - zero:.1f}"/>']
    out += _x_axis(frame, x, _time_ticks(span), _clock, "time since the run started")
    out += _y_axis(frame, y, y.ticks(), y.label, "worst margin so far (symlog)")
    out.append(f'<line class="zero" x1="{frame.left}" x2="{frame.x1}" y1="{zero:.1f}" '
               f'y2="{zero:.1f}"/>')
    out.append(f'<text class="zone" x="{frame.x1 - 6}" y="{zero + 15:.1f}" text-anchor="end">'
               f'below 0: fails its bound</text>')
    style = _style(list(series))
    for name in sorted(series, key=_order):
        color, dash = style[name]
        pts = series[name]
        d = f"M{x(pts[0][0]):.1f} {y(pts[0][1]):.1f}" + "".join(
            f"H{x(t):.1f}V{y(m):.1f}" for t, m in pts[1:])
        out.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" '
                   f'stroke-dasharray="{dash}"><title>{_e(name)}</title></path>')
    for f in failures:
        t = _num(f.get("t"))
        if t is not None and t >= t0:
            fx = x(t - t0)
            out.append(f'<line class="failline" x1="{fx:.1f}" x2="{fx:.1f}" y1="{frame.top}" '
                       f'y2="{frame.y1}"/><path class="failmark" d="M{fx:.1f} {frame.y1 - 1}'
                       f'l-5 -9h10z"><title>{_e(str(f.get("signature", "")))}</title></path>')
    out.append("</svg>")
    legend = [(_swatch(*style[n]), n) for n in sorted(series, key=_order)]
    if failures:
        legend.append((_swatch(_FAIL, mark=True), "a failure saved"))
    return "".join(out) + _legend(legend)


def _rates(proc: dict, window: float) -> list[tuple[float, float]]:
    """Examples per second over all targets, between timeline snapshots at least ``window``
    seconds apart, plotted mid-way: consecutive snapshots in a short run, smoothed in a
    night's run, whose 30 s rates are mostly noise."""
    out, before = [], None
    for snap in _dicts(proc.get("timeline")):
        t = _num(snap.get("t"))
        if t is None:
            continue
        counts = {k: _int(v) for k, v in _mapping(snap.get("examples")).items()}
        if before is None or t < before[0]:
            before = (t, counts)
        elif t > before[0] and t - before[0] >= window:
            done = sum(n - before[1].get(k, 0) for k, n in counts.items())
            out.append(((t + before[0]) / 2, max(done, 0) / (t - before[0])))
            before = (t, counts)
    return out


def _rate_chart(processes: list[dict], t0: float) -> str:
    times = [t for p in processes for s in _dicts(p.get("timeline"))
             if (t := _num(s.get("t"))) is not None]
    window = (max(times, default=t0) - t0) / 90
    series = [(proc, _rates(proc, window)) for proc in processes]
    series = [(p, pts) for p, pts in series if pts]
    if not series:
        return _empty("Not enough timeline snapshots yet: a rate needs two, ~30 s apart.")
    workers = sorted({str(p.get("worker", "?")) for p, _ in series},
                     key=lambda w: (len(w), w))
    color = {w: _SERIES[i % len(_SERIES)] for i, w in enumerate(workers)}
    span = max(t - t0 for _, pts in series for t, _ in pts)
    top = max(r for _, pts in series for _, r in pts)
    frame = _Frame(1100, 320, left=70, right=24, top=16)
    x = _Scale(0, max(span, 1.0), frame.left, frame.x1)
    y = _Scale(*_nice(0, top * 1.05 or 1.0), frame.y1, frame.top)
    out = [frame.open("examples per second over time, per worker")]
    out += _x_axis(frame, x, _time_ticks(max(span, 1.0)), _clock, "time since the run started")
    out += _y_axis(frame, y, y.ticks(), y.label, "examples / s")
    for proc, pts in series:
        worker = str(proc.get("worker", "?"))
        d = "".join(f"{'L' if i else 'M'}{x(t - t0):.1f} {y(r):.1f}"
                    for i, (t, r) in enumerate(pts))
        label = f"round {proc.get('round', '?')}, {worker}"
        out.append(f'<path d="{d}" fill="none" stroke="{color[worker]}" stroke-width="2" '
                   f'stroke-linejoin="round"><title>{_e(label)}</title></path>')
        if len(pts) == 1:
            out.append(f'<circle cx="{x(pts[0][0] - t0):.1f}" cy="{y(pts[0][1]):.1f}" r="3" '
                       f'fill="{color[worker]}"/>')
    out.append("</svg>")
    legend = [(_swatch(color[w]), w) for w in workers]
    if window > 45:
        legend.append(("", f"(averaged over windows of at least {_clock(window)})"))
    return "".join(out) + _legend(legend)


def _bin_order(label: str) -> tuple[float, str]:
    head = label.lstrip(">").split("-")[0]
    try:
        return float(head) + (0.5 if label.startswith(">") else 0), label
    except ValueError:
        return math.inf, label


def _bar_chart(title: str, counts: list[tuple[str, int]], color: str) -> str:
    """Horizontal bars, so that bin labels such as 8193-16384 never collide."""
    if not counts:
        return _figure(title, _empty("Nothing counted yet."))
    total = sum(n for _, n in counts) or 1
    row = 24
    frame = _Frame(540, 10 + row * len(counts) + 8, left=96, right=118, top=8, bottom=8)
    x = _Scale(0, max(n for _, n in counts) or 1, frame.left, frame.x1)
    out = [frame.open(title)]
    for i, (label, n) in enumerate(counts):
        top = frame.top + i * row
        mid = top + row / 2
        out.append(f'<text class="rowlabel" x="{frame.left - 8}" y="{mid + 4:.1f}" '
                   f'text-anchor="end">{_e(label)}</text>')
        width = x(n) - frame.left
        out.append(f'<rect x="{frame.left}" y="{top + 4}" width="{max(width, 0):.1f}" '
                   f'height="{row - 8}" rx="2" fill="{color}"><title>{_e(label)}: {n:,}</title>'
                   f'</rect>')
        text = f"{n:,} ({_percent(n / total)})" if n else "never drawn"
        out.append(f'<text class="{"side" if n else "bad"}" x="{frame.left + width + 6:.1f}" '
                   f'y="{mid + 4:.1f}">{_e(text)}</text>')
    out.append(f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
               f'y2="{frame.y1}"/></svg>')
    return _figure(title, "".join(out))


def _percent(share: float) -> str:
    if share < 0.001:
        return "<0.1%"
    return f"{100 * share:.0f}%" if share >= 0.1 else f"{100 * share:.1f}%"


def _reach(processes: list[dict]) -> str:
    sums: dict[str, Counter] = defaultdict(Counter)
    layouts = with_mask = 0
    for proc in processes:
        cov = _mapping(proc.get("reach", proc.get("coverage")))  # "coverage": before 2026-12-05
        for key in ("sequences_per_pack", "tokens_per_pack", "sequence_length",
                    "rare_and_mask_residues"):
            for label, n in _mapping(cov.get(key)).items():
                sums[key][str(label)] += _int(n)
        layouts += _int(cov.get("layouts"))
        with_mask += _int(cov.get("layouts_with_mask"))
    binned = [("Sequences per pack", "sequences_per_pack", _SERIES[0]),
              ("Tokens per pack (with <cls> and <eos>)", "tokens_per_pack", _SERIES[2]),
              ("Sequence length (residues)", "sequence_length", _SERIES[3])]
    charts = [_bar_chart(title, sorted(sums[key].items(), key=lambda kv: _bin_order(kv[0])),
                         color) for title, key, color in binned]
    residues = sums["rare_and_mask_residues"]
    rare = [(r, residues.get(r, 0)) for r in _RARE] if residues or layouts else []
    rare += sorted((r, n) for r, n in residues.items() if r not in _RARE)
    charts.append(_bar_chart("Rare residues and <mask> (residues drawn)", rare, _SERIES[1]))
    share = f" ({_percent(with_mask / layouts)})" if layouts else ""
    note = (f"{layouts:,} layouts checked (a variant layout counts too); "
            f"{with_mask:,} with a <mask>{share}. Summed over every process and round.")
    return f'<p class="note">{_e(note)}</p><div class="grid2">{"".join(charts)}</div>'


# -- page ----------------------------------------------------------------------------------

def render_report(stats: dict, *, run_dir: Path) -> str:
    """The page for one run's statistics; ``run_dir`` names it and anchors relative paths."""
    run = _mapping(stats.get("run"))
    processes = _dicts(stats.get("processes"))
    targets = _targets(processes)
    failures = sorted((f for p in processes for f in _dicts(p.get("failures"))),
                      key=lambda f: _num(f.get("t")) or 0.0)
    starts = [_num(p.get("started")) for p in processes]
    starts += [_num(s.get("t")) for p in processes for s in _dicts(p.get("timeline"))[:1]]
    t0 = _num(run.get("started")) or min((s for s in starts if s is not None), default=0.0)
    sections = [
        _header(run, processes, targets, failures, run_dir, t0),
        _section("Targets", "targets", _target_table(targets)),
        _section("Metric distributions against their bounds", "metrics", _metrics(targets)),
        _section("Worst margin over time", "margin",
                 _figure("Worst margin so far per target (minimum over processes)",
                         _margin_chart(processes, t0, failures),
                         "Margin is the normalised slack to the bound: 1 is far from it, 0 is on "
                         "it, below 0 fails. Colour is the property, dash the length stratum.")),
        _section("Throughput", "rate",
                 _figure("Examples per second, per worker",
                         _rate_chart(processes, t0),
                         "All targets of a process together, from its timeline snapshots "
                         "(~30 s apart, averaged over longer windows in a long run). One line "
                         "per round of each worker.")),
        _section("Reach into the input space", "reach", _reach(processes)),
        _section(f"Failures ({len(failures)})", "failures",
                 _failure_table(failures, t0, run_dir)),
    ]
    title = f"esmfuzz report: {Path(str(run.get('run_dir') or run_dir)).name}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>'
            + "".join(sections)
            + f'<footer>Written by esmfuzz report from '
              f'{_e(str(Path(run_dir) / "statistics.json"))}.</footer>'
            + "</main></body></html>\n")


def _section(title: str, anchor: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _distinct(processes: list[dict], key: str) -> str:
    values = sorted({str(p[key]) for p in processes if p.get(key) not in (None, "")})
    return ", ".join(values) or "–"


def _header(run: dict, processes: list[dict], targets: list[_Target], failures: list[dict],
            run_dir: Path, t0: float) -> str:
    state = str(run.get("state") or "unknown")
    examples = sum(t.examples for t in targets)
    updated = _num(run.get("updated")) or max(
        (u for p in processes if (u := _num(p.get("updated"))) is not None), default=None)
    elapsed = _num(run.get("elapsed"))
    if elapsed is None and updated and t0:
        elapsed = updated - t0
    duration = _num(run.get("duration"))
    rate = examples / elapsed if elapsed else None
    workers = str(run.get("workers") or "?")
    signatures = len({f.get("signature") for f in failures})
    if failures:
        verdict = (f'<div class="verdict fail">{_plural(len(failures), "failure")} saved, '
                   f'{_plural(signatures, "distinct signature")}: '
                   f'<a href="#failures">see the cases</a></div>')
    elif examples:
        verdict = (f'<div class="verdict ok">No failures in {examples:,} examples over '
                   f'{len(targets)} targets</div>')
    else:
        verdict = '<div class="verdict idle">No examples recorded yet</div>'
    done = min(elapsed / duration, 1.0) if elapsed is not None and duration else None
    progress = (f'<div class="bar"><span style="width:{100 * done:.1f}%"></span></div>'
                if done is not None else "")
    kpis = [
        ("Elapsed", _clock(elapsed),
         f"of {_clock(duration)} ({100 * done:.0f}%)" if done is not None else "", progress),
        ("Examples", _count(examples), _plural(len(targets), "target"), ""),
        ("Examples / s", f"{rate:.3g}" if rate else "–", "over the elapsed time", ""),
        ("Failures", str(len(failures)), _plural(signatures, "signature"), ""),
        ("Rounds", str(_int(run.get("rounds"))),
         f"{workers} worker{'' if workers == '1' else 's'}, "
         f"{_plural(len(processes), 'process', 'es')}",
         ""),
    ]
    cards = "".join(
        f'<div class="kpi{" alarm" if name == "Failures" and failures else ""}">'
        f'<div class="k">{_e(name)}</div><div class="v">{_e(value)}</div>'
        f'<div class="s">{_e(sub)}</div>{extra}</div>'
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
        ("Started", _when(t0 or None)),
        ("Updated", _when(updated)),
        ("Database", str(run.get("database") or "none")),
        ("Corpus", str(run.get("corpus") or "–")),
        ("pytest arguments", " ".join(map(str, args)) if isinstance(args, list) and args
         else "–"),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta)
    where = str(run.get("run_dir") or run_dir)
    return (f'<header><div class="titlebar"><h1>esmfuzz soak report</h1>'
            f'<span class="state {_e(state)}">{_e(state)}</span></div>'
            f'<div class="path">{_e(where)}</div>{verdict}'
            f'<div class="kpis">{cards}</div><dl class="meta">{rows}</dl></header>')


def _margin_cell(margin: float | None) -> str:
    kind = ("none" if margin is None else "bad" if margin < 0
            else "close" if margin < 0.1 else "good")
    return f'<td class="num"><span class="chip {kind}">{_e(_signed(margin))}</span></td>'


def _target_table(targets: list[_Target]) -> str:
    if not targets:
        return _empty("No target has run yet.")
    head = ("Target", "Metric", "Bound", "Examples", "Examples / s", "Failing", "Seen again",
            "Worst margin")
    rows = []
    for t in targets:
        bound = ("–" if t.threshold is None
                 else f"{'>' if t.higher_is_better else '≤'} {t.threshold:.6g}")
        rate = f"{t.examples / t.seconds:.3g}" if t.seconds > 0 else "–"
        failing = f'<span class="chip bad">{t.failing}</span>' if t.failing else "0"
        rows.append(f"<tr><td class='mono'>{_e(t.name)}</td><td>{_e(t.metric or '–')}</td>"
                    f"<td class='num'>{_e(bound)}</td><td class='num'>{t.examples:,}</td>"
                    f"<td class='num'>{_e(rate)}</td><td class='num'>{failing}</td>"
                    f"<td class='num'>{t.seen_again:,}</td>{_margin_cell(t.worst_margin)}</tr>")
    return _table(head, rows)


def _table(head, rows: list[str], widths=()) -> str:
    cols = "".join(f'<col style="width:{w}%">' for w in widths)
    fixed = ' class="fixed"' if widths else ""
    return (f'<div class="tablewrap"><table{fixed}><colgroup>{cols}</colgroup><thead><tr>'
            + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")


def _metrics(targets: list[_Target]) -> str:
    groups: dict[str, list[_Target]] = defaultdict(list)
    for t in targets:
        if t.values:
            groups[t.metric or "metric"].append(t)
    if not groups:
        return _empty("No metric values sampled yet.")
    figures = []
    for metric, group in groups.items():
        higher = _higher_is_better(metric)
        rule = "larger is better, fails at or below" if higher else "smaller is better, fails above"
        figures.append(_figure(f"{metric} ({rule} its bound)", _strip_chart(metric, group)))
    legend = _legend([
        (_swatch(_PASS, dot=True), "an example within its bound"),
        (_swatch(_FAIL, dot=True), "an example past its bound"),
        (_swatch(_INK, fill="#ffffff"), "quartiles and median"),
        (_swatch(_FAIL, "5 3"), "bound"),
        (_swatch(_FAIL, fill="#fbe3e3"), "failing side"),
    ])
    without = [t.name for t in targets if not t.values]
    note = (f'<p class="note">No metric values for {_e(", ".join(without))} '
            f'(pass/fail checks only, or not run yet).</p>' if without else "")
    return legend + "".join(figures) + note


def _case_link(case: str, run_dir: Path) -> str:
    if not case:
        return '<span class="muted">not saved</span>'
    path = Path(case)
    exists = (path if path.is_absolute() else Path(run_dir) / path).exists()
    href = path.as_uri() if path.is_absolute() else quote(case)
    missing = "" if exists else ' <span class="chip bad">missing</span>'
    return (f'<a href="{_e(href)}" title="{_e(case)}">{_e(path.name)}</a>'
            f'<div class="muted small">{_e(_clip(str(path.parent), 60))}</div>{missing}')


def _pattern(text: str) -> str:
    if len(text) <= 90:
        return _e(text)
    return f"<details><summary>{_e(text[:60])}…</summary>{_e(text)}</details>"


def _failure_table(failures: list[dict], t0: float, run_dir: Path) -> str:
    if not failures:
        return '<div class="empty ok">✓ No failures saved in this run.</div>'
    head = ("Time", "Target", "Signature", "Layer pattern", "Status", "Case")
    rows = []
    for f in failures:
        t = _num(f.get("t"))
        since = f"+{_clock(t - t0)}" if t is not None and t0 else ""
        rows.append(
            f"<tr><td>{_e(since)}<div class='muted small'>{_e(_when(t))}</div></td>"
            f"<td class='mono'>{_e(str(f.get('target') or '–')).replace('[', '<wbr>[')}</td>"
            f"<td>{_e(str(f.get('signature') or '–')).replace(',', ',<wbr>')}</td>"
            f"<td class='mono small'>{_pattern(str(f.get('pattern') or '–'))}</td>"
            f"<td><span class='chip close'>{_e(str(f.get('status') or '–'))}</span></td>"
            f"<td>{_case_link(str(f.get('case') or ''), run_dir)}</td></tr>")
    return _table(head, rows, widths=(12, 17, 29, 15, 7, 20))


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


def _higher_is_better(metric: str) -> bool:
    """As :mod:`esmfuzz.registry` declares the metric (a log with none: smaller is better)."""
    from esmfuzz.registry import metric as declared

    try:
        return declared(metric).higher_is_better
    except ValueError:
        return False
