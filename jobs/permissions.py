"""The API's permission beside IsAuthenticated: viewers read everything staff read, and every
request that would change something (any method but GET, HEAD, OPTIONS) is a 403 for them."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

from jobs.visibility import VIEWERS_LOOK_ONLY, may_act


class LooksOnly(BasePermission):
    message = VIEWERS_LOOK_ONLY

    def has_permission(self, request: Any, view: Any) -> bool:
        return request.method in SAFE_METHODS or may_act(request.user)
