"""Charts for the explorer as inline SVG, drawn on the node: no script, no library, no network.

Each chart is an `<svg role="img">` with a `<title>` and a `<desc>` (what a screen reader
announces), labelled axes with their unit (t CO2e: 1 t = 1,000 units of 1 kg CO2e, SPEC §3.4),
and a `<title>` on every bar with its exact figure; the page prints the same numbers as a
table beside it. Geometry is in a fixed viewBox that scales to any width, and colours come
from the page's stylesheet (classes), so print and dark backgrounds can restyle them.

Quantities arrive as integer units; tonnes are shown from the integers (`format_tonnes`), and
floats serve only for pixel positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from markupsafe import Markup, escape

UNITS_PER_TONNE: Final = 1000
WIDTH: Final = 640
HEIGHT: Final = 260
LEFT: Final = 64  # room for the y axis labels
RIGHT: Final = 12
TOP: Final = 16
BOTTOM: Final = 56  # room for the month labels and the axis title
TICKS: Final = 5
LEGEND: Final = 20  # room above the plot for the legend of a stacked chart


def format_tonnes(units: int) -> str:
    """Units (kg) as tonnes with exact decimals, grouped: 1234567 -> "1,234.567"."""
    sign = "-" if units < 0 else ""
    whole, rest = divmod(abs(units), UNITS_PER_TONNE)
    return f"{sign}{whole:,}" if rest == 0 else f"{sign}{whole:,}.{rest:03d}".rstrip("0")


def nice_step(top: float) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about TICKS ticks up to `top`."""
    if top <= 0:
        return 1.0
    raw = top / TICKS
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """One kind of bar: its name (for the legend and the bar titles) and a CSS class."""

    name: str
    css: str


def column_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    labels: Sequence[str],
    series: Sequence[Series],
    values: Sequence[Sequence[int]],
    y_title: str = "t CO2e",
) -> Markup:
    """Columns per label (a month), the series stacked bottom up; `values[s][i]` in units."""
    assert len(series) == len(values) and all(len(v) == len(labels) for v in values)
    totals = [sum(column) for column in zip(*values, strict=True)] if labels else []
    top_t = max(totals, default=0) / UNITS_PER_TONNE
    step = nice_step(top_t)
    axis_top = step * max(1, math.ceil(top_t / step)) if top_t > 0 else step * TICKS
    top = TOP + (LEGEND if len(series) > 1 else 0)
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - top - BOTTOM
    parts = [_open(chart_id, title, description)]
    parts.append(_y_axis(axis_top, step, top, plot_h, y_title))
    slot = plot_w / max(1, len(labels))
    bar_w = max(2.0, slot * 0.7)
    every = max(1, math.ceil(len(labels) / 12))  # at most 12 month labels
    for index, label in enumerate(labels):
        x = LEFT + slot * index + (slot - bar_w) / 2
        base = float(top + plot_h)
        for kind, row in zip(series, values, strict=True):
            units = row[index]
            if units <= 0:
                continue
            height = plot_h * (units / UNITS_PER_TONNE) / axis_top
            base -= height
            parts.append(
                f'<rect class="bar {escape(kind.css)}" x="{x:.1f}" y="{base:.1f}" '
                f'width="{bar_w:.1f}" height="{height:.1f}"><title>{escape(label)}: '
                f"{escape(format_tonnes(units))} t CO2e {escape(kind.name)}</title></rect>"
            )
        if index % every == 0:
            parts.append(_month_tick(LEFT + slot * index + slot / 2, top + plot_h, label, index))
    parts.append(
        f'<line class="axis" x1="{LEFT}" y1="{top + plot_h}" x2="{WIDTH - RIGHT}" '
        f'y2="{top + plot_h}"/>'
    )
    parts.append(
        f'<text class="axis-title" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" '
        'text-anchor="middle">month (月份)</text>'
    )
    if len(series) > 1:
        parts.append(_legend(series))
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    *,
    chart_id: str,
    title: str,
    description: str,
    rows: Sequence[tuple[str, int]],
    css: str,
    x_title: str = "t CO2e",
) -> Markup:
    """Horizontal bars, one per (label, units) row, largest first as given."""
    row_h = 28
    label_w = 250
    height = TOP + row_h * max(1, len(rows)) + 40
    plot_w = WIDTH - label_w - RIGHT - 70
    top_t = max((units for _, units in rows), default=0) / UNITS_PER_TONNE
    parts = [_open(chart_id, title, description, height=height)]
    for index, (label, units) in enumerate(rows):
        y = TOP + row_h * index
        length = plot_w * (units / UNITS_PER_TONNE) / top_t if top_t > 0 else 0.0
        shown = fit(label, label_w - 14)
        parts.append(
            f'<text class="tick" x="{label_w - 8}" y="{y + row_h / 2 + 4:.1f}" '
            f'text-anchor="end">{escape(shown)}</text>'
            f'<rect class="bar {escape(css)}" x="{label_w}" y="{y + 4}" '
            f'width="{max(length, 1.0):.1f}" height="{row_h - 8}"><title>{escape(label)}: '
            f"{escape(format_tonnes(units))} t CO2e</title></rect>"
            f'<text class="value" x="{label_w + max(length, 1.0) + 6:.1f}" '
            f'y="{y + row_h / 2 + 4:.1f}">{escape(format_tonnes(units))}</text>'
        )
    parts.append(
        f'<text class="axis-title" x="{label_w + plot_w / 2:.1f}" y="{height - 12}" '
        f'text-anchor="middle">{escape(x_title)}</text></svg>'
    )
    return Markup("".join(parts))


def progress_bar(*, chart_id: str, title: str, done: int, target: int) -> Markup:
    """How far `done` units have come toward `target` units, with the percentage."""
    assert target > 0
    share = done / target
    width = WIDTH - 2 * RIGHT
    filled = width * min(share, 1.0)
    percent = f"{100 * share:.1f} %"
    parts = [
        _open(
            chart_id,
            title,
            f"{format_tonnes(done)} of {format_tonnes(target)} t CO2e, {percent}",
            height=44,
        ),
        f'<rect class="track" x="{RIGHT}" y="6" width="{width}" height="20" rx="3"/>',
        f'<rect class="bar redeemed" x="{RIGHT}" y="6" width="{filled:.1f}" height="20" rx="3"/>',
        f'<text class="value" x="{RIGHT}" y="40">{escape(percent)} · '
        f"{escape(format_tonnes(done))} / {escape(format_tonnes(target))} t CO2e</text>",
        "</svg>",
    ]
    return Markup("".join(parts))


def _open(chart_id: str, title: str, description: str, *, height: int = HEIGHT) -> str:
    chart = escape(chart_id)
    return (
        f'<svg class="chart" id="{chart}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-labelledby="{chart}-title {chart}-desc" preserveAspectRatio="xMinYMin meet" '
        f'xmlns="http://www.w3.org/2000/svg"><title id="{chart}-title">{escape(title)}</title>'
        f'<desc id="{chart}-desc">{escape(description)}</desc>'
    )


def _month_tick(x: float, y: float, label: str, index: int) -> str:
    """A "YYYY-MM" label as its month, with the year below the first column and each
    January (twelve full labels do not fit side by side on a phone)."""
    year, _, month = label.partition("-")
    parts = [
        f'<text class="tick" x="{x:.1f}" y="{y + 16}" text-anchor="middle">'
        f"{escape(month or year)}</text>"
    ]
    if month and (index == 0 or month == "01"):
        parts.append(
            f'<text class="tick year" x="{x:.1f}" y="{y + 30}" text-anchor="middle">'
            f"{escape(year)}</text>"
        )
    return "".join(parts)


def text_width(text: str) -> float:
    """About how wide `text` is at 12px: CJK characters are twice as wide as Latin ones."""
    return sum(12.0 if ord(char) > 0x2E80 else 6.6 for char in text)


def fit(text: str, width: float) -> str:
    """`text`, cut with an ellipsis so that it takes at most about `width` pixels."""
    if text_width(text) <= width:
        return text
    kept = ""
    for char in text:
        if text_width(kept + char + "…") > width:
            break
        kept += char
    return kept + "…"


def _y_axis(axis_top: float, step: float, top: float, plot_h: float, y_title: str) -> str:
    parts = []
    ticks = round(axis_top / step)
    for index in range(ticks + 1):
        value = step * index
        y = top + plot_h - plot_h * value / axis_top
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_tick_label(value))}</text>"
        )
    parts.append(
        f'<text class="axis-title" transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_title)}</text>'
    )
    return "".join(parts)


def _legend(series: Sequence[Series]) -> str:
    parts = []
    x = LEFT
    for kind in series:
        parts.append(
            f'<rect class="bar {escape(kind.css)}" x="{x}" y="4" width="10" height="10"/>'
            f'<text class="legend" x="{x + 14}" y="13">{escape(kind.name)}</text>'
        )
        x += 14 + 7 * len(kind.name) + 16
    return "".join(parts)
