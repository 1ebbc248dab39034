"""Request and response shapes of the logs API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from config.rest import check_json, check_length
from config.tracing import SPAN_ID, TRACE_ID
from logs.records import LEVELS


class LevelField(serializers.ChoiceField):
    """A level name, case-insensitive on input (`warning` = `WARNING`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=list(LEVELS), **kwargs)

    def to_internal_value(self, data: Any) -> str:
        return str(super().to_internal_value(data.upper() if isinstance(data, str) else data))


class HexIdField(serializers.CharField):
    """A trace or span id: hex digits of a fixed length, either case on input, lowercase out."""

    def __init__(self, *, digits: int, **kwargs: Any) -> None:
        self.pattern = TRACE_ID if digits == 32 else SPAN_ID
        self.digits = digits
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        value = str(super().to_internal_value(data)).lower()
        if value and not self.pattern.match(value):
            raise serializers.ValidationError(f"must be {self.digits} hex digits")
        return value


class LogSearchParams(serializers.Serializer):
    job_id = serializers.UUIDField(required=False)
    workflow_id = serializers.UUIDField(required=False)
    trace_id = HexIdField(digits=32, required=False, help_text="The records of one trace (32 hex digits).")
    level = LevelField(required=False, help_text="Minimum level: WARNING gives WARNING, ERROR and CRITICAL.")
    service = serializers.CharField(required=False, max_length=128)
    q = serializers.CharField(required=False, max_length=200, help_text="Text in the message (any case).")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=50)
    cursor = serializers.CharField(required=False, max_length=200)
    order = serializers.ChoiceField(required=False, choices=["desc", "asc"], default="desc")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be after since"]})
        return attrs


class LogRecordSerializer(serializers.Serializer):
    """One record as the API shows it (and as the contract in ARCHITECTURE.md names it)."""

    id = serializers.UUIDField()
    timestamp = serializers.DateTimeField()
    level = serializers.CharField()
    service = serializers.CharField()
    logger = serializers.CharField()
    message = serializers.CharField()
    job_id = serializers.UUIDField(allow_null=True)
    workflow_id = serializers.UUIDField(allow_null=True)
    attempt = serializers.IntegerField(allow_null=True)
    type = serializers.CharField()
    queue = serializers.CharField()
    host = serializers.CharField()
    pid = serializers.IntegerField()
    exception = serializers.CharField(allow_null=True)
    extra = serializers.DictField()
    trace_id = serializers.CharField(help_text="The trace the record was written in (32 hex digits); empty if none.")
    span_id = serializers.CharField(help_text="Its span (16 hex digits); empty if none.")


class LogPageSerializer(serializers.Serializer):
    results = LogRecordSerializer(many=True)
    next = serializers.URLField(allow_null=True)


TEXT_HELP = f"At most {settings.LOG_MESSAGE_MAX_CHARS:,} characters (LOG_MESSAGE_MAX_CHARS); no NUL (U+0000)."


class IngestRecordSerializer(serializers.Serializer):
    """One record to ingest. Over a limit is a 400 naming it: what a client sends on purpose is
    not cut silently (the platform's own records are, by the sink)."""

    message = serializers.CharField(allow_blank=True, trim_whitespace=False, help_text=TEXT_HELP)
    level = LevelField()
    service = serializers.CharField(max_length=128)
    timestamp = serializers.DateTimeField(required=False, help_text="Defaults to the time of the request.")
    logger = serializers.CharField(required=False, max_length=256, allow_blank=True, default="")
    job_id = serializers.UUIDField(required=False, allow_null=True)
    workflow_id = serializers.UUIDField(required=False, allow_null=True)
    attempt = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=2**31)
    host = serializers.CharField(required=False, max_length=256, allow_blank=True, default="")
    pid = serializers.IntegerField(required=False, min_value=0, max_value=2**32 - 1, default=0)
    trace_id = HexIdField(digits=32, required=False, allow_blank=True, default="")
    span_id = HexIdField(digits=16, required=False, allow_blank=True, default="")
    exception = serializers.CharField(required=False, allow_blank=True, default="", help_text=TEXT_HELP)
    extra = serializers.DictField(
        required=False,
        default=dict,
        help_text=f"At most {settings.LOG_EXTRA_MAX_BYTES:,} bytes as JSON (LOG_EXTRA_MAX_BYTES); no NUL (U+0000).",
    )

    def validate_message(self, value: str) -> str:
        return check_length(value, "message", max_chars=settings.LOG_MESSAGE_MAX_CHARS, setting="LOG_MESSAGE_MAX_CHARS")

    def validate_exception(self, value: str) -> str:
        return check_length(
            value, "exception", max_chars=settings.LOG_MESSAGE_MAX_CHARS, setting="LOG_MESSAGE_MAX_CHARS"
        )

    def validate_extra(self, value: dict[str, Any]) -> dict[str, Any]:
        check_json(value, "extra", max_bytes=settings.LOG_EXTRA_MAX_BYTES, setting="LOG_EXTRA_MAX_BYTES")
        return value


class IngestSerializer(serializers.Serializer):
    records = IngestRecordSerializer(
        many=True, allow_empty=False, help_text=f"At most {settings.LOGS_INGEST_MAX:,} records (LOGS_INGEST_MAX)."
    )

    def validate_records(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(value) > settings.LOGS_INGEST_MAX:
            raise serializers.ValidationError(
                f"at most {settings.LOGS_INGEST_MAX:,} records per request (LOGS_INGEST_MAX)"
            )
        return value


class LogStatsSerializer(serializers.Serializer):
    by_level = serializers.DictField(child=serializers.IntegerField())
    by_service = serializers.DictField(child=serializers.IntegerField())
