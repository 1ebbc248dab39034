"""The dashboard's SVG charts: what they draw stays inside them."""

from __future__ import annotations

import re

import pytest

from dashboard.charts import line_chart

TICK_FONT_PX = 11  # the stylesheet's `.chart .tick`; a digit is at most 0.62 em wide in system fonts


@pytest.mark.parametrize("top", [7, 20_000, 34_471, 1_234_567_890])
def test_the_y_axis_label_fits_left_of_the_plot(top):
    """The largest value's label ends at the plot's left edge: it must start inside the SVG
    ("34,471" was drawn from x = -5 and showed as ":4,471")."""
    svg = line_chart([("done", "#000", [0, top / 2, top])], ["12:00", "12:02"], title="t", unit="/min")
    label = f"{top:,}/min" if top >= 10 else f"{top}/min"
    x = float(re.search(r'<text x="([\d.]+)"[^>]*text-anchor="end" class="tick">' + re.escape(label), svg)[1])
    assert x - len(label) * TICK_FONT_PX * 0.62 >= 0, (x, label)
    plot_left = float(re.search(r'<line x1="([\d.]+)"', svg)[1])
    assert x < plot_left
