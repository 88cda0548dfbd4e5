"""Inline SVG for the soak report: number formats, scales, axes, legends and figure frames.

Drawn by hand so the page needs no JavaScript and no network (:mod:`esmfuzz.report`)."""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass

escape = html.escape
SERIES = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
           "#ff9da7", "#86bcb6", "#bab0ac")
DASHES = ("", "7 3", "2 3", "9 3 2 3", "1 2", "12 4")
PASS, FAIL, INK = "#4e79a7", "#d64545", "#1f2933"


# -- formatting ----------------------------------------------------------------------------

_e = html.escape
SUPER = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt(value: float) -> str:
    """Short and exact enough for a tick or a cell: 0.5, 12, 2×10⁵, 10⁻⁶."""
    if value == 0:
        return "0"
    size = abs(value)
    if 1e-3 <= size < 1e5:
        text = f"{value:.3g}"
        return (text if "e" not in text else f"{value:.0f}").replace("-", "−")
    exponent = math.floor(math.log10(size))
    mantissa = value / 10**exponent
    power = "10" + str(exponent).translate(SUPER)
    if round(abs(mantissa), 2) == 1:
        return ("−" if value < 0 else "") + power
    return f"{mantissa:.2g}×{power}".replace("-", "−")


def signed(value: float | None) -> str:
    if value is None:
        return "–"
    return ("+" if value > 0 else "") + fmt(value)


def plural(n: int, word: str, suffix: str = "s") -> str:
    return f"{n:,} {word}{'' if n == 1 else suffix}"


def count_text(n: float) -> str:
    n = int(n)
    if abs(n) < 10_000:
        return f"{n:,}"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(max(seconds, 0)))
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m) + [f"{s}s"] * bool(s)
    return " ".join(parts[:2]) or "0s"


def when(epoch: float | None) -> str:
    if epoch is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


# -- scales and axes ------------------------------------------------------------------------

class Scale:
    """Data to pixels: linear; log10; symmetric log (linear within ±1, where passing margins
    live, log beyond), so that margins from −10⁶ to 1 share an axis; or ``cosine``, log10 of
    the distance to 1, since cosines of 0.999 and 0.999999 differ as much as ratios do."""

    def __init__(self, lo: float, hi: float, start: float, end: float, kind: str = "linear"):
        self.lo, self.hi, self.kind = lo, hi, kind
        self.start, self.end = start, end
        self.a, self.b = self._t(lo), self._t(hi)
        if self.b == self.a:
            self.b = self.a + 1
        self.step = tick_step(hi - lo) if kind == "linear" else 0.0

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
            return linear_ticks(lo, hi)
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
        return fmt(v)


def tick_step(span: float, count: int = 6) -> float:
    raw = span / count if span > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return mag * next(s for s in (1, 2, 2.5, 5, 10) if s * mag >= raw * 0.999)


def linear_ticks(lo: float, hi: float) -> list[float]:
    step = tick_step(hi - lo)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def nice(lo: float, hi: float) -> tuple[float, float]:
    if hi <= lo:
        lo, hi = lo - 0.5 * (abs(lo) or 1), hi + 0.5 * (abs(hi) or 1)
    step = tick_step(hi - lo)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def time_ticks(span: float) -> list[float]:
    steps = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
             86400, 172800, 604800)
    step = next((s for s in steps if span / s <= 8), steps[-1])
    return [k * step for k in range(int(span // step) + 1)]


@dataclass
class Frame:
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
                f'aria-label="{escape(label)}">')


def x_axis(frame: Frame, scale: Scale, ticks, fmt, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{frame.left}" x2="{frame.x1}" y1="{frame.y1}" '
           f'y2="{frame.y1}"/>']
    for v in ticks:
        x = scale(v)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" '
                   f'y2="{frame.y1}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{frame.y1 + 16}" '
                   f'text-anchor="middle">{escape(fmt(v))}</text>')
    out.append(f'<text class="axis-label" x="{(frame.left + frame.x1) / 2:.1f}" '
               f'y="{frame.height - 8}" text-anchor="middle">{escape(label)}</text>')
    return out


def y_axis(frame: Frame, scale: Scale, ticks, fmt, label: str) -> list[str]:
    out = [f'<line class="axis" x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" '
           f'y2="{frame.y1}"/>']
    for v in ticks:
        y = scale(v)
        out.append(f'<line class="grid" x1="{frame.left}" x2="{frame.x1}" y1="{y:.1f}" '
                   f'y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{frame.left - 7}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{escape(fmt(v))}</text>')
    middle = (frame.top + frame.y1) / 2
    out.append(f'<text class="axis-label" x="14" y="{middle:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {middle:.1f})">{escape(label)}</text>')
    return out


def swatch(color: str, dash: str = "", *, dot: bool = False, fill: str = "",
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


def legend_box(items: list[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(
        f'<span>{swatch}{escape(label)}</span>' for swatch, label in items) + "</div>"


def empty_figure(text: str) -> str:
    return f'<div class="empty">{escape(text)}</div>'


def figure_box(title: str, body: str, note: str = "") -> str:
    note = f'<p class="note">{note}</p>' if note else ""
    return f'<figure><figcaption>{escape(title)}</figcaption>{note}{body}</figure>'
