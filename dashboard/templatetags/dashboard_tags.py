from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def get_item(mapping: dict[str, Any], key: str) -> Any:
    return mapping.get(key, 0)


@register.filter
def percent(value: float | None) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "-"


@register.filter
def seconds(value: float | None) -> str:
    if not isinstance(value, int | float):
        return "-"  # no data (a missing percentile resolves to "" in a template)
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


@register.filter
def pretty(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


@register.filter
def split_pairs(value: str) -> list[tuple[str, str]]:
    """ "a:A,b:B" → [("a", "A"), ("b", "B")] (choices written inline in a template)."""
    return [tuple(item.split(":", 1)) for item in value.split(",")]  # type: ignore[misc]
