"""How the peers of `bench pipeline` say how many tasks they ran, at (nearly) no cost to them.

A peer's no-op task only adds one to a counter in its own process; a thread per process adds
that count to a Redis key every 20 ms (INCRBY). The benchmark reads the key to tell when the
queue drained. A Redis INCR in every task, as the peers once did, was a round trip a task
that none of them needs and that ours does not pay: it slowed them against us (issue 33)."""

from __future__ import annotations

import os
import threading
import time

import redis

FLUSH_SECONDS = 0.02


class Done:
    """Tasks this process ran, added to a Redis key in the background."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.count = 0
        self._lock = threading.Lock()
        self._pid = 0  # the flusher is started in the process that counts (after a fork)

    def add(self) -> None:
        with self._lock:
            self.count += 1
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._flush, name="bench-done", daemon=True).start()

    def _flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        while True:
            time.sleep(FLUSH_SECONDS)
            with self._lock:
                n, self.count = self.count, 0
            if n:
                client.incrby(self.key, n)
