"""The dependency graph of a workflow as an SVG picture: tasks in columns by depth (roots on
the left), each box coloured by its status, arrows from each dependency to its dependents.
Server-side, no JavaScript: the admin (and the dashboard) embed it as is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.utils.html import escape

STATUS_COLOURS = {
    "PENDING": "#e5e7eb", "QUEUED": "#dbeafe", "RUNNING": "#bfdbfe", "RETRYING": "#fde68a",
    "SUCCEEDED": "#bbf7d0", "DEAD_LETTER": "#fecaca", "CANCELLED": "#d1d5db",
    "WAITING": "#e9d5ff", "FAILED": "#fecaca",  # a wait step: waiting for its signal or time; timed out
}  # fmt: skip
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 40, 60, 14, 10
MAX_TASKS = 400  # beyond this a picture stops being readable; the table lists every task


@dataclass(frozen=True)
class GraphTask:
    id: str
    depends_on: Sequence[str]
    status: str
    compensation_status: str | None = None
    detail: str = ""  # after the status: a map's children done of all, an approval's decisions
    link: str | None = None  # a sub-workflow step's child workflow page


def graph_tasks(rows: Sequence[dict[str, Any]], link: Callable[[str], str] | None = None) -> list[GraphTask]:
    """GraphTasks from the API's task rows (`serializers.task_rows`): a map is one box with its
    children's counts, an approval says how many approved of how many it needs, and a
    sub-workflow step links to its child (through `link`, given the child's id)."""
    out = []
    for t in rows:
        detail, href = "", None
        if t.get("map"):
            children = t["map"]["children"]
            detail = f"{children['succeeded']}/{children['total']}" + (
                f" · {children['failed']} failed" if children["failed"] else ""
            )
        elif t.get("approval"):
            approved = sum(d["decision"] == "approve" for d in t["decisions"] or [])
            detail = f"{approved}/{t['approval'].get('approvers', 1)} approved"
        elif t.get("workflow") and link is not None:
            href = link(t["workflow"]["id"])
            detail = f"→ {t['workflow']['tasks_succeeded']}/{t['workflow']['tasks_total']}"
        out.append(GraphTask(t["id"], t["depends_on"], t["status"], t["compensation_status"], detail, href))
    return out


def depths(tasks: Sequence[GraphTask]) -> dict[str, int]:
    """Column of each task: 0 for roots, else one more than its deepest dependency. Tasks are
    given in topological order, so one pass suffices."""
    depth: dict[str, int] = {}
    for t in tasks:
        depth[t.id] = 1 + max((depth[d] for d in t.depends_on), default=-1)
    return depth


def render_svg(tasks: Sequence[GraphTask]) -> str:
    if len(tasks) > MAX_TASKS:
        return f"<p>{len(tasks)} tasks: too many to draw; see the table below.</p>"
    depth = depths(tasks)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for t in tasks:
        column = depth[t.id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        place[t.id] = (PAD + column * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
    width = PAD * 2 + (max(depth.values(), default=0) + 1) * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=1) * (BOX_H + GAP_Y) - GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="workflow dependency graph" font-family="system-ui, sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#6b7280"/></marker></defs>',
    ]
    for t in tasks:
        x2, y2 = place[t.id]
        for dep in t.depends_on:
            x1, y1 = place[dep]
            parts.append(
                f'<line x1="{x1 + BOX_W}" y1="{y1 + BOX_H // 2}" x2="{x2}" y2="{y2 + BOX_H // 2}" '
                'stroke="#6b7280" stroke-width="1.2" marker-end="url(#arrow)"/>'
            )
    for t in tasks:
        x, y = place[t.id]
        fill = STATUS_COLOURS.get(t.status, "#ffffff")
        label = t.id if len(t.id) <= 22 else t.id[:21] + "…"
        status = t.status + (f" {t.detail}" if t.detail else "")
        status += f" · undo {t.compensation_status}" if t.compensation_status else ""
        box = (
            f"<g><title>{escape(t.id)}: {escape(status)}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="{fill}" stroke="#374151"/>'
            f'<text x="{x + 8}" y="{y + 16}" font-weight="600">{escape(label)}</text>'
            f'<text x="{x + 8}" y="{y + 32}" fill="#374151">{escape(status)}</text></g>'
        )
        parts.append(f'<a href="{escape(t.link)}">{box}</a>' if t.link else box)
    parts.append("</svg>")
    return "".join(parts)
