"""Small server-side SVG charts for the dashboard (no JavaScript library to ship or update)."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape

W, H, PAD_L, PAD_B, PAD_T = 560, 160, 40, 22, 10
CHAR_W = 7  # px of a tick label's character, at the stylesheet's tick size, with room to spare


def line_chart(
    series: Sequence[tuple[str, str, Sequence[float]]], labels: Sequence[str], *, title: str, unit: str = ""
) -> str:
    """Lines over the same x axis: `series` is (name, colour, values). Accessible: a title,
    a description and a visually hidden table of the values come with it."""
    n = max((len(v) for _, _, v in series), default=0)
    top = max((max(v, default=0) for _, _, v in series), default=0) or 1
    top_label = _fmt(top) + unit
    # The y axis's labels end left of the plot: wide enough for the widest ("34,471" was cut
    # to ":4,471" at a fixed 40 px).
    pad_l = max(PAD_L, 12 + CHAR_W * len(top_label))
    plot_w, plot_h = W - pad_l - 8, H - PAD_B - PAD_T

    def x(i: int) -> float:
        return pad_l + (plot_w * i / max(n - 1, 1))

    def y(v: float) -> float:
        return PAD_T + plot_h - plot_h * v / top

    parts = [
        f'<svg viewBox="0 0 {W} {H}" class="chart" role="img" aria-labelledby="t-{id(series)}">',
        f'<title id="t-{id(series)}">{escape(title)}</title>',
        f'<line x1="{pad_l}" y1="{PAD_T + plot_h}" x2="{W - 8}" y2="{PAD_T + plot_h}" class="axis"/>',
        f'<text x="{pad_l - 6}" y="{PAD_T + 8}" text-anchor="end" class="tick">{escape(top_label)}</text>',
        f'<text x="{pad_l - 6}" y="{PAD_T + plot_h}" text-anchor="end" class="tick">0</text>',
    ]
    if labels:
        parts.append(f'<text x="{pad_l}" y="{H - 4}" class="tick">{escape(labels[0])}</text>')
        parts.append(f'<text x="{W - 8}" y="{H - 4}" text-anchor="end" class="tick">{escape(labels[-1])}</text>')
    for name, colour, values in series:
        if not values:
            continue
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        line = f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
        parts.append(f"{line}<title>{escape(name)}</title></polyline>")
    parts.append("</svg>")
    legend = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{c}"></span>{escape(name)}</span>'
        for name, c, _ in series
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
