"""The bridge's Kafka consumer: arroyo's, told how long a poll may wait."""

from __future__ import annotations

import time

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.types import BrokerValue


class LingeringConsumer(KafkaConsumer):
    """arroyo's Kafka consumer, but while the bridge holds a partial batch a poll waits at
    most `cap` seconds (arroyo waits up to one second), `idle` says whether the last poll
    found nothing, i.e. the bridge has caught up and should not wait for more, and `gap` how
    long the stream was quiet before the last message (seconds since the one before)."""

    cap: float | None = None
    idle = False
    gap = 0.0
    _last_at = float("-inf")

    def poll(self, timeout: float | None = None) -> BrokerValue[KafkaPayload] | None:
        if self.cap is not None and (timeout is None or timeout > self.cap):
            timeout = self.cap
        message = super().poll(timeout)
        self.idle = message is None
        if message is not None:
            now = time.monotonic()
            self.gap, self._last_at = now - self._last_at, now
        return message
