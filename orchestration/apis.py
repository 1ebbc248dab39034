"""Read-only APIs about dispatch: the declared queues (`queues/`), with their backlog, and
the circuit breakers (`breakers/`), the caller's for each job type. Breakers and backlogs are
each owner's own; a user sees those of the owners it sees (its own, those it administers),
staff every owner's (`?owner=` narrows the breakers, and picks whose breaker
`breakers/{type}/` shows)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import selectors, visibility
from metrics import heartbeat
from orchestration import breaker


class BreakerSerializer(serializers.Serializer):
    owner = serializers.IntegerField(help_text="The user whose jobs this breaker counts and holds.")
    type = serializers.CharField()
    state = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    successes = serializers.IntegerField(help_text="In the current window.")
    failures = serializers.IntegerField(help_text="In the current window.")
    opened_at = serializers.FloatField(allow_null=True, help_text="Unix time.")
    open_until = serializers.FloatField(allow_null=True, help_text="Unix time; then one probe job may run.")
    probe_running = serializers.BooleanField()


def _page(name: str, serializer: serializers.Serializer) -> Any:
    """The schema of a one-page list: {"results": [...], "next": null}."""
    return inline_serializer(name, {"results": serializer, "next": serializers.URLField(allow_null=True)})


OWNER = OpenApiParameter(
    "owner", OpenApiTypes.INT,
    description="Whose breakers: any owner's for staff, else your own or an owner's you administer (default: "
    "every owner you see; your own for `breakers/{type}/`).",
)  # fmt: skip


def _owners(request: Request, *, default_all: bool) -> list[int] | None:
    """Whose breakers the caller asks for (None: every owner's). `?owner=` names one, which
    the caller must see (another one is nobody's: []); without it, every owner the caller
    sees, or its own for one type. A bad owner is a 400."""
    user: Any = request.user
    seen = visibility.scope(user)
    raw = request.query_params.get("owner")
    if raw is None:
        if not default_all:
            return [int(user.pk)]
        return None if seen.owners is None else sorted(seen.owners)
    if not raw.isdigit():
        raise serializers.ValidationError({"owner": ["must be a user id (a whole number)."]})
    return [int(raw)] if seen.allows(int(raw)) else []


class BreakerListApi(APIView):
    @extend_schema(
        operation_id="breakers_list",
        parameters=[OWNER],
        responses=_page("BreakerPage", BreakerSerializer(many=True)),
        description="The caller's circuit breaker for every job type with recent results, and those of the owners it "
        "administers (staff: every owner's). "
        "While a breaker is open, its owner's jobs of that type wait (PENDING) without using attempts; other "
        "owners' jobs of the type are not affected.",
    )
    def get(self, request: Request) -> Response:
        owners = _owners(request, default_all=True)
        keys = breaker.known() if owners is None else [key for o in owners for key in breaker.known(o)]
        states = [breaker.state_of(o, t).as_dict() for o, t in keys]
        return Response({"results": states, "next": None})


class BreakerDetailApi(APIView):
    @extend_schema(operation_id="breakers_retrieve", parameters=[OWNER], responses=BreakerSerializer)
    def get(self, request: Request, job_type: str) -> Response:
        owners = _owners(request, default_all=False)
        if not owners:
            raise exceptions.NotFound(f"no breakers of owner {request.query_params.get('owner')} you may see")
        return Response(breaker.state_of(owners[0], job_type).as_dict())


class QueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    window = serializers.IntegerField(help_text="The most of its jobs dispatched and not yet started.")
    rate_per_second = serializers.FloatField(allow_null=True, help_text="Dispatch rate limit (null: none).")
    burst = serializers.IntegerField(allow_null=True)
    slot_share = serializers.FloatField(help_text="The most of its workers' slots its long jobs may hold.")
    weight = serializers.FloatField(help_text="Its share of a relay round when several queues have work waiting.")
    depth = serializers.IntegerField(
        help_text="Jobs waiting to be dispatched, behind the window (the caller's; staff: everyone's)."
    )
    in_flight = serializers.IntegerField(help_text="Jobs dispatched, not yet started (the caller's; staff: all).")
    lag_seconds = serializers.FloatField(help_text="How long the oldest waiting job has waited (0: none waits).")
    consumers = serializers.IntegerField(
        help_text="Worker processes consuming the queue now (0: nobody runs its jobs)."
    )


class QueueListApi(APIView):
    @extend_schema(
        operation_id="queues_list",
        responses=_page("QueuePage", QueueSerializer(many=True)),
        description="The declared queues (QUEUES): the only ones a job may name. Each with its limits, and its "
        "backlog: the jobs of the owners the caller sees (its own, those it administers; staff: everyone's). "
        "A queue's jobs beyond its window wait to be dispatched, shared fairly between owners; a queue with no "
        "consumers holds back only its own jobs.",
    )
    def get(self, request: Request) -> Response:
        owners = visibility.scope(request.user).owners
        consumers = heartbeat.consumers()
        results = []
        for queue in settings.QUEUES.values():
            backlog = selectors.queue_backlog(queue.name, owners=owners)
            results.append({
                **queue.as_dict(), "depth": backlog.waiting, "in_flight": backlog.in_flight,
                "lag_seconds": backlog.oldest_seconds, "consumers": consumers.get(queue.name, 0),
            })  # fmt: skip
        return Response({"results": results, "next": None})
