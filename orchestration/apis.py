"""The circuit breakers API (`breakers/`): the state of each job type's breaker, read-only."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestration import breaker


class BreakerSerializer(serializers.Serializer):
    type = serializers.CharField()
    state = serializers.ChoiceField(choices=["closed", "open", "half_open"])
    successes = serializers.IntegerField(help_text="In the current window.")
    failures = serializers.IntegerField(help_text="In the current window.")
    opened_at = serializers.FloatField(allow_null=True, help_text="Unix time.")
    open_until = serializers.FloatField(allow_null=True, help_text="Unix time; then one probe job may run.")
    probe_running = serializers.BooleanField()


class BreakerListApi(APIView):
    @extend_schema(
        operation_id="breakers_list",
        responses=inline_serializer(
            "BreakerPage", {"results": BreakerSerializer(many=True), "next": serializers.URLField(allow_null=True)}
        ),
        description="The circuit breaker of every job type with recent results. While a type's breaker is open "
        "its jobs wait (PENDING) without using attempts.",
    )
    def get(self, request: Request) -> Response:
        return Response({"results": [breaker.state_of(t).as_dict() for t in breaker.known_types()], "next": None})


class BreakerDetailApi(APIView):
    @extend_schema(operation_id="breakers_retrieve", responses=BreakerSerializer)
    def get(self, request: Request, job_type: str) -> Response:
        return Response(breaker.state_of(job_type).as_dict())
