"""Writes on logs: ingesting records that external services send to the API."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import orjson
from django.conf import settings

from config import kafka
from jobs import visibility
from jobs.errors import JobNotFound
from jobs.selectors import job_get, job_visible_to

_producer: Any = None
_producer_pid = 0
_lock = threading.Lock()


def log_scope(user: Any, job_id: Any = None) -> tuple[bool, frozenset[int] | None]:
    """Which records `user` may search, for a search about `job_id` (or none): (visible, the
    owners to filter by), by the one rule (jobs.visibility). Staff see every record (no
    filter); others the records of the owners they see (their own, those they administer),
    and for a job of those, live or archived, all its lines, those written outside an attempt
    included (no filter). Any other job is not visible at all. The API and the dashboard both
    ask here."""
    seen = visibility.scope(user)
    if seen.everyone or job_id is None:
        return True, seen.owners
    try:
        job_get(user=user, job_id=job_id, archived=True)
    except JobNotFound:
        return False, seen.owners
    return True, None


class IngestUnavailable(Exception):
    """Kafka did not acknowledge the records in time: nothing was accepted."""


class UnknownJobs(Exception):
    def __init__(self, errors: dict[int, str]) -> None:
        super().__init__("records name jobs the caller cannot see")
        self.errors = errors


def _get_producer() -> Any:
    global _producer, _producer_pid
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            from confluent_kafka import Producer

            _producer = Producer(kafka.producer_config(**{"linger.ms": 1}))
            _producer_pid = os.getpid()
        return _producer


def logs_ingest(*, user: Any, records: list[dict[str, Any]]) -> int:
    """Put validated records on Kafka `logs` (the sink stores them) and wait until Kafka has
    them all, so a 202 means they will be stored. A record naming a job must name one the
    caller sees (staff: any); the job's owner is stamped on it."""
    job_ids = {str(r["job_id"]) for r in records if r.get("job_id")}
    owners: dict[str, int] = {}
    if job_ids:
        owners = {
            str(pk): owner for pk, owner in job_visible_to(user).filter(id__in=job_ids).values_list("id", "owner_id")
        }
        missing = {
            i: f"job {r['job_id']} not found"
            for i, r in enumerate(records)
            if r.get("job_id") and str(r["job_id"]) not in owners
        }
        if missing:
            raise UnknownJobs(missing)
    now_us = int(time.time() * 1_000_000)
    producer = _get_producer()
    failures: list[Any] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for r in records:
        job_id = str(r["job_id"]) if r.get("job_id") else None
        ts = r.get("timestamp")
        doc = {
            "timestamp": int(ts.timestamp() * 1_000_000) if ts else now_us,
            "level": r["level"],
            "logger": r.get("logger") or "",
            "message": r["message"],
            "service": r["service"],
            "host": r.get("host") or "",
            "pid": r.get("pid") or 0,
            "job_id": job_id,
            "workflow_id": str(r["workflow_id"]) if r.get("workflow_id") else None,
            "attempt": r.get("attempt") or None,
            "owner_id": owners.get(job_id, 0) if job_id else 0,
            "trace_id": r.get("trace_id") or None,
            "span_id": r.get("span_id") or None,
            "exception": r.get("exception") or None,
            "extra": r.get("extra") or None,
        }
        producer.produce(
            settings.KAFKA_LOGS_TOPIC, orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS), on_delivery=on_delivery
        )
    if producer.flush(10) or failures:
        raise IngestUnavailable(f"Kafka did not take the records: {failures[0] if failures else 'timed out'}")
    return len(records)
