"""Declared queues: the only queues a job may name, each with its dispatch limits.

`QUEUES` lists them, `;` between queues, options after the name:

    QUEUES="default weight=4; emails rate=5/s burst=10; reports window=200 slot_share=0.25"

- `window`: the most jobs of the queue dispatched and not yet started (in Kafka, in Redis, in
  a worker's prefetch). The backlog beyond it waits in PostgreSQL, where the relay picks the
  next jobs fairly across owners; a queue whose workers are slow, stopped or missing fills
  its own window and holds back nothing else. Default QUEUE_WINDOW.
- `rate`: the most jobs a second (or `/m`, `/h`) the relays dispatch from the queue, all
  relays together (a token bucket in Redis), `burst` at once (default: one second's worth).
- `slot_share`: the most of its workers' slots the queue's long jobs may hold while another
  queue's jobs wait for those workers. Default FAIR_SLOT_SHARE.
- `weight`: the queue's share of a relay round when several queues have dispatches waiting
  (a queue of weight 4 gets four times the room of one of weight 1, if it can use it; what
  one leaves goes to the others). Default 1.

Names follow the API's rule (1-100 of letters, digits and `_.:-`). A job for a queue not
declared here is refused at every submit path with the declared names. This module reads
settings only; it imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
_RATE = re.compile(r"(\d+(?:\.\d+)?)/(s|sec|second|m|min|minute|h|hour)\Z")
_PER_SECOND = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
               "hour": 3600.0}  # fmt: skip
OPTIONS = ("window", "rate", "burst", "slot_share", "weight")


class QueueError(ValueError):
    """A QUEUES value that cannot be used; the text says which part and why."""


@dataclass(frozen=True)
class Queue:
    name: str
    window: int
    rate: float | None = None  # jobs per second; None: no limit
    burst: int = 1
    slot_share: float = 1.0
    weight: float = 1.0

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "window": self.window, "rate_per_second": self.rate,
                "burst": self.burst if self.rate else None, "slot_share": self.slot_share,
                "weight": self.weight}  # fmt: skip


def parse_rate(text: str) -> float:
    """'5/s' → 5.0, '600/m' → 10.0 jobs per second."""
    match = _RATE.fullmatch(text)
    if match is None or float(match.group(1)) <= 0:
        raise QueueError(f"rate {text!r} is not a positive rate like '5/s', '300/m' or '1000/h'")
    return float(match.group(1)) / _PER_SECOND[match.group(2)]


def parse(text: str, *, window: int, slot_share: float) -> dict[str, Queue]:
    """The queues `text` declares, by name, in the order given. Raises QueueError."""
    queues: dict[str, Queue] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, *options = part.split()
        if QUEUE_NAME.fullmatch(name) is None:
            raise QueueError(
                f"{name!r} is not a queue name (1-100 letters, digits and '_.:-', first a letter or digit)"
            )
        if name in queues:
            raise QueueError(f"{name!r} is declared twice")
        values: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in OPTIONS or not value:
                raise QueueError(f"{name}: {option!r} is not one of {', '.join(o + '=…' for o in OPTIONS)}")
            values[key] = value
        queues[name] = _queue(name, values, window, slot_share)
    if not queues:
        raise QueueError("declares no queue")
    return queues


def _queue(name: str, values: Mapping[str, str], window: int, slot_share: float) -> Queue:
    try:
        rate = parse_rate(values["rate"]) if "rate" in values else None
        burst = int(values["burst"]) if "burst" in values else max(1, round(rate or 1))
        queue = Queue(
            name=name,
            window=int(values.get("window", window)),
            rate=rate,
            burst=burst,
            slot_share=float(values.get("slot_share", slot_share)),
            weight=float(values.get("weight", 1.0)),
        )
    except QueueError as exc:
        raise QueueError(f"{name}: {exc}") from None
    except ValueError as exc:
        raise QueueError(f"{name}: {exc}") from None
    if queue.window < 1:
        raise QueueError(f"{name}: window must be at least 1, not {queue.window}")
    if queue.burst < 1:
        raise QueueError(f"{name}: burst must be at least 1, not {queue.burst}")
    if "burst" in values and rate is None:
        raise QueueError(f"{name}: burst needs a rate")
    if not 0 < queue.slot_share <= 1:
        raise QueueError(f"{name}: slot_share must be above 0 and at most 1, not {queue.slot_share}")
    if not 0.01 <= queue.weight <= 1000:  # also refuses nan and inf
        raise QueueError(f"{name}: weight must be from 0.01 to 1000, not {values['weight']}")
    return queue


def problem(name: str, declared: Mapping[str, object]) -> str:
    """Why a job may not name `name` as its queue ("" when it may): `declared`'s keys are the
    names it may."""
    if name in declared:
        return ""
    names = ", ".join(sorted(declared))
    return f"{name!r} is not a declared queue; the declared queues are: {names} (QUEUES)"
