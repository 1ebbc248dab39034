"""Idempotency keys the platform makes for itself, which users may not take.

The scheduler submits each slot of a schedule as the schedule's owner, with the key
`schedule:<schedule id>:<slot>`. Keys are scoped per owner, so an owner who had posted a job
with that key first would turn the slot's submit into a conflict. The API therefore refuses
every key under these prefixes; code that makes platform keys takes its prefix from here.
"""

from __future__ import annotations

SCHEDULE_KEY_PREFIX = "schedule:"
BULK_KEY_PREFIX = "bulk:"  # a re-run's new job: bulk:<action job>:<job it re-runs> (jobs.bulk_actions)
BATCH_KEY_PREFIX = "batch:"  # a batch's callback job: batch:<batch>:on_success|on_complete (jobs.batches)
RESERVED_KEY_PREFIXES = (SCHEDULE_KEY_PREFIX, BULK_KEY_PREFIX, BATCH_KEY_PREFIX)


def reserved_prefix(key: str) -> str | None:
    """The reserved prefix `key` starts with, if any."""
    return next((prefix for prefix in RESERVED_KEY_PREFIXES if key.startswith(prefix)), None)
