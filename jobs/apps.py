from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.db.backends.signals import connection_created


def _tune_session(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Session settings the batch statements of the state machine are planned with."""
    if connection.vendor == "postgresql" and settings.DB_RANDOM_PAGE_COST:
        with connection.cursor() as cur:
            cur.execute("SELECT set_config('random_page_cost', %s, false)", [str(settings.DB_RANDOM_PAGE_COST)])


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Every role registers the same handlers at start-up, so a type accepted at submit
        # is runnable by any worker.
        from jobs.handlers import load_handler_modules
        from jobs.task_registry import load_task_modules

        load_handler_modules()
        load_task_modules()  # Django tasks (JOB_TASK_MODULES), registered under their import path
        connection_created.connect(_tune_session, dispatch_uid="jobs.tune_session")
