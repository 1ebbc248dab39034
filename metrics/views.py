"""`/metrics`: Prometheus text format. In the dev stack it shows every role on the host (one
multiprocess directory); in production (each role serves its own on METRICS_PORT) the web's
own families only (`prom.web_role`). With METRICS_TOKEN set, a scraper must send
`Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from metrics.prom import registry, web_role


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if settings.METRICS_TOKEN:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not hmac.compare_digest(sent.encode(), settings.METRICS_TOKEN.encode()):
            return HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
    return HttpResponse(generate_latest(registry(web_role())), content_type=CONTENT_TYPE_LATEST)
