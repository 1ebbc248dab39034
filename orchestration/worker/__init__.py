"""Running dispatched jobs inside a Celery worker process: claim, run the handler, record the
outcome; one job per Celery message (`execute`) or a batch of them (`execute_batch`).

    outcomes  Outcome, writing one's log line, telling the breaker, surviving a dropped connection
    monitor   the thread that renews leases, sees cancel requests and interrupts handlers
              (SIGALRM); it ticks whatever batch the process works through (`Ticking`)
    claims    this worker's id; claiming jobs: many at once, or within a concurrency limit
    running   run_claimed: a claimed job's handler under its timeout, and its outcome
    single    execute: one dispatched job (breaker gate → claim → run_claimed)
    batch     execute_batch: many (one claim; successes written together; hand-back)

Each module imports only modules listed above it (pyproject.toml, [tool.importlinter]). All
of them log to the logger "orchestration.worker".
"""

from orchestration.worker.batch import execute_batch
from orchestration.worker.claims import claim_many, worker_id
from orchestration.worker.monitor import MONITOR
from orchestration.worker.outcomes import Outcome
from orchestration.worker.single import execute, gate


def task_modules_problem() -> str | None:
    """Why this worker must not start: a module of JOB_TASK_MODULES did not import (the
    jobs of its tasks would dead-letter as having no handler), or None."""
    from jobs.task_backend.registry import IMPORT_ERRORS

    if not IMPORT_ERRORS:
        return None
    failed = "; ".join(f"{module}: {error}" for module, error in sorted(IMPORT_ERRORS.items()))
    return f"JOB_TASK_MODULES do not import, so this worker cannot run their tasks (orchestration.E101): {failed}"


__all__ = [
    "MONITOR", "Outcome", "claim_many", "execute", "execute_batch", "gate", "task_modules_problem", "worker_id",
]  # fmt: skip
