"""The scheduler role: `leader` (leadership and the tick; start there), `fencing` (the
PostgreSQL fencing epoch), and one module per scan: `release`, `reaper`, `stale`, `cron`,
`blocked`, `breaker_paused`, `share_deferred`, `batch_callbacks`, `waits`."""

from orchestration.scheduler.fencing import Fenced, fence
from orchestration.scheduler.leader import LeaderLock, Scheduler, TickResult

__all__ = ["Fenced", "LeaderLock", "Scheduler", "TickResult", "fence"]
