from typing import Any

from django.conf import settings
from django.http import HttpRequest

from jobs import audit, visibility


def links(request: HttpRequest) -> dict[str, Any]:
    """Every page's: Flower's address, and whether the user may act (a viewer's pages show no
    action button; its POSTs are refused anyway)."""
    user = getattr(request, "user", None)
    return {
        "flower_url": settings.FLOWER_URL,
        "can_act": user is None or visibility.may_act(user),
        "can_audit": user is not None and user.is_authenticated and audit.readable_by(user),
    }
