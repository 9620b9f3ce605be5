"""Inline SVG charts for reports: no JavaScript, no external requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 56, 170, 16, 44


@dataclass(frozen=True)
class Series:
    """One line (or one bar group member) of a chart."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    dashed: bool = False
    # A wide translucent band drawn beneath the other lines (the worst case, which often
    # coincides with one attack's line and would hide it if drawn on top).
    band: bool = False


BAND = "stroke='#000000' stroke-opacity='0.22' stroke-width='10' stroke-linecap='round'"


def _frame(title: str, x_label: str, y_label: str, css_class: str) -> list[str]:
    parts = [
        f"<svg class='{css_class}' xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' "
        f"height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
        f"aria-label='{escape(title)}'>",
        f"<rect x='0' y='0' width='{WIDTH}' height='{HEIGHT}' fill='white'/>",
    ]
    plot_height = HEIGHT - TOP - BOTTOM
    for tick in range(0, 11, 2):
        y = TOP + plot_height * (1 - tick / 10)
        parts.append(
            f"<line x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y:.1f}' y2='{y:.1f}' stroke='#e4e4e4'/>"
        )
        parts.append(
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' font-size='11' "
            f"text-anchor='end'>{tick * 10}%</text>"
        )
    parts.append(
        f"<text x='{(LEFT + WIDTH - RIGHT) / 2}' y='{HEIGHT - 6}' font-size='12' "
        f"text-anchor='middle'>{escape(x_label)}</text>"
    )
    parts.append(
        f"<text x='14' y='{TOP + plot_height / 2}' font-size='12' text-anchor='middle' "
        f"transform='rotate(-90 14 {TOP + plot_height / 2})'>{escape(y_label)}</text>"
    )
    return parts


def _legend(labels: Sequence[tuple[str, str, bool]]) -> list[str]:
    """(label, stroke attributes, dashed) per line."""
    parts = []
    for index, (label, stroke, dashed) in enumerate(labels):
        y = TOP + 10 + index * 18
        dash = " stroke-dasharray='5 4'" if dashed else ""
        parts.append(
            f"<line x1='{WIDTH - RIGHT + 10}' x2='{WIDTH - RIGHT + 34}' y1='{y}' "
            f"y2='{y}' {stroke}{dash}/>"
        )
        parts.append(
            f"<text x='{WIDTH - RIGHT + 40}' y='{y + 4}' font-size='11'>{escape(label[:22])}</text>"
        )
    return parts


def line_chart(
    title: str, series: Sequence[Series], x_label: str, y_label: str = "accuracy"
) -> str:
    """Accuracy (0..1) against a numeric x, one polyline with markers per series."""
    parts = _frame(title, x_label, y_label, "chart line-chart")
    xs = [x for s in series for x in s.x]
    low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if high == low:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM

    def position(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + plot_width * (x - low) / (high - low),
            TOP + plot_height * (1 - min(max(y, 0.0), 1.0)),
        )

    for x in sorted(set(xs)):
        px, _ = position(x, 0)
        parts.append(
            f"<text x='{px:.1f}' y='{HEIGHT - BOTTOM + 16}' font-size='11' "
            f"text-anchor='middle'>{x:.3g}</text>"
        )
    legend = []
    bands, lines = [s for s in series if s.band], [s for s in series if not s.band]
    for line in bands:
        points = [position(x, y) for x, y in zip(line.x, line.y, strict=True) if y is not None]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f"<polyline class='series band' points='{path}' fill='none' {BAND}/>")
        legend.append((line.label, BAND, False))
    for index, line in enumerate(lines):
        color = PALETTE[index % len(PALETTE)]
        points = [position(x, y) for x, y in zip(line.x, line.y, strict=True) if y is not None]
        dash = " stroke-dasharray='5 4'" if line.dashed else ""
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(
            f"<polyline class='series' points='{path}' fill='none' stroke='{color}' "
            f"stroke-width='2.5'{dash}/>"
        )
        parts += [
            f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3.5' fill='{color}'/>" for px, py in points
        ]
        legend.append((line.label, f"stroke='{color}' stroke-width='3'", line.dashed))
    parts += _legend(legend)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    title: str, categories: Sequence[str], series: Sequence[Series], y_label: str = "accuracy"
) -> str:
    """Grouped bars of accuracies (0..1): one group per category, one bar per series."""
    parts = _frame(title, "class", y_label, "chart bar-chart")
    plot_width = WIDTH - LEFT - RIGHT
    plot_height = HEIGHT - TOP - BOTTOM
    group = plot_width / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    legend = []
    for index, category in enumerate(categories):
        x = LEFT + group * (index + 0.5)
        parts.append(
            f"<text x='{x:.1f}' y='{HEIGHT - BOTTOM + 16}' font-size='11' "
            f"text-anchor='middle'>{escape(category)}</text>"
        )
    for number, values in enumerate(series):
        color = PALETTE[number % len(PALETTE)]
        legend.append((values.label, f"stroke='{color}' stroke-width='3'", False))
        for index, value in enumerate(values.y):
            if value is None:
                continue
            height = plot_height * min(max(value, 0.0), 1.0)
            x = LEFT + group * index + group * 0.1 + bar * number
            parts.append(
                f"<rect class='bar' x='{x:.1f}' y='{TOP + plot_height - height:.1f}' "
                f"width='{bar:.1f}' height='{height:.1f}' fill='{color}'/>"
            )
    parts += _legend(legend)
    parts.append("</svg>")
    return "".join(parts)


HEAT_CELL_WIDTH, HEAT_CELL_HEIGHT = 92, 46
HEAT_LEFT, HEAT_TOP = 170, 110


def heat_colour(value: float | None) -> str:
    """White (0) to deep red (1); grey where there is no value."""
    if value is None:
        return "#d9d9d9"
    value = min(max(value, 0.0), 1.0)
    # From white to #b2182b.
    red = round(255 + (0xB2 - 255) * value)
    green = round(255 + (0x18 - 255) * value)
    blue = round(255 + (0x2B - 255) * value)
    return f"#{red:02x}{green:02x}{blue:02x}"


def heat_map(
    title: str,
    rows: Sequence[str],
    columns: Sequence[str],
    values: Sequence[Sequence[float | None]],
    captions: Sequence[Sequence[Sequence[str]]],
    *,
    row_label: str,
    column_label: str,
) -> str:
    """A grid of cells coloured by ``values[r][c]`` (0..1), each with caption lines; row
    names on the left, column names on top."""
    width = HEAT_LEFT + HEAT_CELL_WIDTH * len(columns) + 16
    height = HEAT_TOP + HEAT_CELL_HEIGHT * len(rows) + 16
    parts = [
        f"<svg class='chart heat-map' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' role='img' "
        f"aria-label='{escape(title)}'>",
        f"<rect x='0' y='0' width='{width}' height='{height}' fill='white'/>",
        f"<text x='{HEAT_LEFT}' y='14' font-size='12' font-weight='bold'>"
        f"{escape(column_label)}</text>",
        f"<text x='8' y='{HEAT_TOP - 8}' font-size='12' font-weight='bold'>"
        f"{escape(row_label)}</text>",
    ]
    for index, name in enumerate(columns):
        x = HEAT_LEFT + HEAT_CELL_WIDTH * (index + 0.5)
        parts.append(
            f"<text class='column' x='{x:.1f}' y='{HEAT_TOP - 8}' font-size='11' "
            f"transform='rotate(-30 {x:.1f} {HEAT_TOP - 8})'>{escape(name[:24])}</text>"
        )
    for r, name in enumerate(rows):
        y = HEAT_TOP + HEAT_CELL_HEIGHT * r
        parts.append(
            f"<text class='row' x='{HEAT_LEFT - 8}' y='{y + HEAT_CELL_HEIGHT / 2 + 4:.1f}' "
            f"font-size='11' text-anchor='end'>{escape(name[:28])}</text>"
        )
        for c in range(len(columns)):
            x = HEAT_LEFT + HEAT_CELL_WIDTH * c
            value = values[r][c]
            parts.append(
                f"<rect class='cell' x='{x}' y='{y}' width='{HEAT_CELL_WIDTH}' "
                f"height='{HEAT_CELL_HEIGHT}' fill='{heat_colour(value)}' stroke='white'/>"
            )
            ink = "white" if value is not None and value > 0.55 else "black"
            for line, text in enumerate(captions[r][c]):
                size = 13 if line == 0 else 10
                parts.append(
                    f"<text x='{x + HEAT_CELL_WIDTH / 2:.1f}' y='{y + 17 + 13 * line}' "
                    f"font-size='{size}' text-anchor='middle' fill='{ink}'>"
                    f"{escape(text)}</text>"
                )
    parts.append("</svg>")
    return "".join(parts)
