"""Batches whose jobs ended since the last tick → their counts folded, and their callbacks
made once a closed batch has every job terminal (jobs.batches); a batch that holds a workflow
map's children moves its map on (workflows.maps.batch_moved), in the same transaction. Each batch is looked at in a
fenced transaction of its own with its row locked, so one that fails does not stop the others
and a deposed leader makes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import redis
from django.db import InterfaceError, OperationalError, connection, transaction

from jobs import batches
from orchestration.scheduler.fencing import Fenced, fence
from workflows import maps

logger = logging.getLogger("orchestration.scheduler")


def fire_batch_callbacks(epoch: int, clock: Callable[[], datetime], *, limit: int) -> int:
    while batches.fold() >= batches.FOLD_BATCH:
        pass  # a backlog of deltas: all of it, so no batch is looked at with counts still unfolded
    made = 0
    for batch_id in batches.to_check(limit=limit):
        try:
            with transaction.atomic():
                fence(epoch)
                fired = batches.fire_callbacks(batch_id, now=clock())
                mapped = maps.batch_moved(batch_id, clock())
        except (Fenced, redis.ConnectionError, redis.TimeoutError):
            raise
        except (OperationalError, InterfaceError):
            if not connection.is_usable():
                raise
            logger.exception("batch.check_failed", extra={"batch_id": str(batch_id)})
            continue
        except Exception:  # this batch's own trouble: it stays flagged, the others go on
            logger.exception("batch.check_failed", extra={"batch_id": str(batch_id)})
            continue
        if mapped is not None:
            logger.info("workflow.map_ended", extra={"batch_id": str(batch_id), "state": mapped})
        for f in fired:
            logger.info("batch.callback", extra={"batch_id": str(f.batch_id), "callback": f.callback,
                                                 "job_id": str(f.job_id)})  # fmt: skip
        made += len(fired)
    return made
