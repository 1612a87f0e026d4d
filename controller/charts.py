"""Inline SVG for the status pages: line charts over time and a confidence interval against its threshold.

Pure functions from numbers to SVG text; colours come from CSS classes so the page's light and dark
schemes both apply. No JavaScript, no external library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 560, 180
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 12, 26
CHAR_W = 6.2  # px per character of the 11 px axis font, enough to keep labels apart
MARKER_ROWS = 2


@dataclass(frozen=True, slots=True)
class Point:
    at: datetime
    value: float


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(count + 2) if first + i * step <= high + 1e-12]


def line_chart(title: str, series: Mapping[str, Sequence[Point]], fmt: Callable[[float], str],
               markers: Sequence[tuple[datetime, str]] = (), classes: Mapping[str, str] | None = None,
               empty: str = "") -> Markup:
    """One chart: a line per series (class from `classes`, e.g. baseline/candidate), step changes as markers;
    `empty` says why there is no data when waiting would not bring any."""
    points = [p for s in series.values() for p in s if math.isfinite(p.value)]
    label = escape(title)
    if not points:
        return Markup(f'<p class="nodata">{label}: {escape(empty or "no data yet")}</p>')
    times = [p.at.timestamp() for p in points] + [m[0].timestamp() for m in markers]
    t0, t1 = min(times), max(times)
    if t1 - t0 < 1:
        t1 = t0 + 1
    v0 = min(0.0, min(p.value for p in points))
    v1 = max(p.value for p in points) * 1.1 or 1.0
    inner_w, inner_h = WIDTH - PAD_LEFT - PAD_RIGHT, HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(t: float) -> float:
        return PAD_LEFT + (t - t0) / (t1 - t0) * inner_w

    def y(v: float) -> float:
        return PAD_TOP + inner_h - (v - v0) / (v1 - v0) * inner_h

    # The caption is visible: an SVG <title> alone is only a tooltip, and on-call must see which chart is which.
    parts = [f'<figcaption class="chart-title">{label}</figcaption>',
             f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}">',
             f"<title>{label}</title>"]
    for tick in _ticks(v0, v1):
        parts.append(f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(tick):.1f}" '
                     f'y2="{y(tick):.1f}"/><text class="axis" x="{PAD_LEFT - 4}" y="{y(tick) + 4:.1f}" '
                     f'text-anchor="end">{escape(fmt(tick))}</text>')
    row_ends = [-math.inf] * MARKER_ROWS
    for at, text in sorted(markers, key=lambda m: m[0]):
        mx = x(at.timestamp())
        parts.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{PAD_TOP}" y2="{HEIGHT - PAD_BOTTOM}">'
                     f"<title>{escape(text)}</title></line>")
        parts.append(_marker_label(mx, text, row_ends))
    for name, values in series.items():
        css = escape((classes or {}).get(name, "series"))
        finite = [p for p in values if math.isfinite(p.value)]
        if not finite:
            continue
        path = " ".join(f"{x(p.at.timestamp()):.1f},{y(p.value):.1f}" for p in finite)
        parts.append(f'<polyline class="line {css}" points="{path}"><title>{escape(name)}</title></polyline>')
        last = finite[-1]
        parts.append(f'<circle class="dot {css}" cx="{x(last.at.timestamp()):.1f}" cy="{y(last.value):.1f}" r="3">'
                     f"<title>{escape(name)}: {escape(fmt(last.value))}</title></circle>")
    parts.append(f'<text class="axis" x="{PAD_LEFT}" y="{HEIGHT - 6}">{escape(_clock(t0))}</text>'
                 f'<text class="axis" x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
                 f"{escape(_clock(t1))} UTC</text></svg>")
    return Markup("".join(parts))


def _marker_label(mx: float, text: str, row_ends: list[float]) -> str:
    """The marker's label in the first row where it overlaps no earlier label; none when every row is taken.

    Steps that follow each other within seconds would otherwise print their labels over one another; the
    dashed line stays, with its label as a tooltip.
    """
    width = len(text) * CHAR_W
    start = mx + 2 if mx + 2 + width <= WIDTH - PAD_RIGHT else mx - 2 - width  # flip left at the right edge
    for row, end in enumerate(row_ends):
        if start >= end + 4:
            row_ends[row] = start + width
            anchor = "start" if start > mx else "end"
            tx = mx + 2 if anchor == "start" else mx - 2
            return (f'<text class="axis" x="{tx:.1f}" y="{PAD_TOP + 10 + row * 12}" text-anchor="{anchor}">'
                    f"{escape(text)}</text>")
    return ""


def _clock(ts: float) -> str:
    """UTC, like the history's timestamps: the server's local zone means nothing to a reader elsewhere."""
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def interval_chart(low: float | None, estimate: float | None, high: float | None, threshold: float,
                   upper_limit: bool, fmt: Callable[[float], str]) -> Markup:
    """The confidence interval as a bar on an axis with the threshold line; the passing side is shaded."""
    width, height, pad = 320, 44, 14
    known = [v for v in (low, estimate, high) if v is not None and math.isfinite(v)]
    span_low = min([threshold, *known])
    span_high = max([threshold, *known])
    margin = (span_high - span_low) * 0.15 or abs(threshold) * 0.5 or 0.05
    v0, v1 = span_low - margin, span_high + margin

    def x(v: float) -> float:
        clipped = min(max(v, v0), v1)
        return pad + (clipped - v0) / (v1 - v0) * (width - 2 * pad)

    tx = x(threshold)
    ok_x, ok_w = (pad, tx - pad) if upper_limit else (tx, width - pad - tx)
    word = "≤" if upper_limit else "≥"
    if low is None and high is None and estimate is not None:  # a fixed figure (offline), not an interval
        description = f"figure {fmt(estimate)}, needs {word} {fmt(threshold)}"
    else:
        description = (f"interval [{fmt(low) if low is not None else '?'}, "
                       f"{fmt(high) if high is not None else '?'}], needs {word} {fmt(threshold)}")
    parts = [f'<svg class="interval" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(description)}">',
             f"<title>{escape(description)}</title>",
             f'<rect class="ok-zone" x="{ok_x:.1f}" y="6" width="{max(ok_w, 0):.1f}" height="20"/>',
             f'<line class="axisline" x1="{pad}" x2="{width - pad}" y1="16" y2="16"/>',
             f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="2" y2="30"/>',
             f'<text class="axis" x="{tx:.1f}" y="{height - 2}" text-anchor="middle">{escape(fmt(threshold))}</text>']
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        parts.append(f'<line class="ci" x1="{x(low):.1f}" x2="{x(high):.1f}" y1="16" y2="16"/>'
                     f'<line class="ci" x1="{x(low):.1f}" x2="{x(low):.1f}" y1="10" y2="22"/>'
                     f'<line class="ci" x1="{x(high):.1f}" x2="{x(high):.1f}" y1="10" y2="22"/>')
    if estimate is not None and math.isfinite(estimate):
        parts.append(f'<circle class="estimate" cx="{x(estimate):.1f}" cy="16" r="4"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
