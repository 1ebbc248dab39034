from typing import Any

from django.conf import settings
from django.http import HttpRequest


def links(request: HttpRequest) -> dict[str, Any]:
    return {"flower_url": settings.FLOWER_URL}
