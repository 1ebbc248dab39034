"""Gunicorn settings shared by `make run` and docker-compose (`--config python:config.gunicorn`)."""

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    # A web process that exits takes its live gauges with it (Prometheus multiprocess mode).
    from metrics.prom import mark_dead

    mark_dead(worker.pid)
