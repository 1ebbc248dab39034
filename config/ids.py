"""The platform's own ids: UUID version 7 (RFC 9562), time-ordered.

A random (version 4) primary key sends every insert to a random leaf of its B-tree, and of
every index that leads with it (attempts, outbox, workflow tasks). Past shared_buffers each
such insert reads a page from disk, and the first change to a page after a checkpoint writes
the whole 8 kB page to the WAL: at 10 million jobs that was most of the 28-43 kB of WAL a
job cost (docs/scaling.md). Version 7 ids start with the time in milliseconds, so new rows
land on the right-hand edge of each index, whose pages stay in memory. They are as unique
and as hard to guess as version 4 ids (74 random bits); the time they carry is the job's
created_at, which its owner sees anyway.
"""

from __future__ import annotations

import uuid

# uuid_utils: a maintained, compiled RFC 9562 implementation (Python has uuid.uuid7 only from
# 3.14); its compat module returns the standard library's uuid.UUID, which Django expects.
from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    """A new time-ordered id (UUID version 7)."""
    return uuid7()


def id_at(seconds: float) -> uuid.UUID:
    """A version 7 id for the time `seconds` since the epoch (for rows made in bulk with
    a past creation time, such as a benchmark's fill)."""
    whole = int(seconds)
    return uuid7(whole, int((seconds - whole) * 1e9))
