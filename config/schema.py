"""OpenAPI post-processing: every operation documents the error answers the API gives, in
the one error shape `config.rest.exception_handler` produces, so clients (and schemathesis)
know them."""

from __future__ import annotations

from typing import Any

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": True},
        "status": {"type": "string"},
        "job": {"type": "string"},
        "workflow": {"type": "string"},
    },
    "required": ["detail", "code"],
    "additionalProperties": True,
}
ERRORS = {
    "400": "Invalid input; `errors` has the problems by field (by position in lists).",
    "401": "Missing or bad token.",
    "403": "Not allowed.",
    "404": "No such object (another user's objects look the same).",
    "405": "Method not allowed.",
    "409": "The object's state does not allow this, or the idempotency key was used with another body.",
    "413": "Request body too large.",
    "415": "Unsupported media type.",
    "429": "Too many requests; `Retry-After` says when to try again.",
    "503": "A backing store (the log store, Kafka) is not answering.",
}
PUBLIC = ("/api/schema/", "/api/docs/", "/health/")


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in result.get("paths", {}).items():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in ERRORS.items():
                if code == "401" and path.startswith(PUBLIC):
                    continue
                operation["responses"].setdefault(
                    code, {"description": description, "content": {"application/json": {"schema": ref}}}
                )
    return result
