import importlib.util
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.db.backends.signals import connection_created
from django.db.models.signals import post_migrate, pre_migrate


def _tune_session(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Session settings the batch statements of the state machine are planned with."""
    if connection.vendor == "postgresql" and settings.DB_RANDOM_PAGE_COST:
        with connection.cursor() as cur:
            cur.execute("SELECT set_config('random_page_cost', %s, false)", [str(settings.DB_RANDOM_PAGE_COST)])


def _no_statement_timeout(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """Migrations may build indexes concurrently on tables of millions of rows: longer than
    DB_STATEMENT_TIMEOUT_SECONDS allows any other statement (`_statement_timeout_again`
    restores it for whatever the process does next)."""
    _session(using, "SET statement_timeout = 0")


def _statement_timeout_again(sender: Any, using: str = "default", **kwargs: Any) -> None:
    _session(using, "RESET statement_timeout")  # back to the connection's own (its options)


def _session(using: str, sql: str) -> None:
    from django.db import connections

    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute(sql)


def tasks_framework_problems(**kwargs: Any) -> list[checks.CheckMessage]:
    """orchestration.E105: on Django 5.2 the Tasks framework is the django-tasks backport, which must
    be installed and in INSTALLED_APPS (its app runs the framework's checks and signals)."""
    if importlib.util.find_spec("django.tasks") is not None or apps.is_installed("django_tasks"):
        return []
    return [
        checks.Error(
            "Django's Tasks framework is missing: this Django has no django.tasks, and django_tasks (the backport) "
            "is not in INSTALLED_APPS",
            hint="pip install django-tasks (requirements/base.txt pins it) and add 'django_tasks' to INSTALLED_APPS.",
            id="orchestration.E105",
        )
    ]


def _framework_installed() -> bool:
    return importlib.util.find_spec("django.tasks") is not None or importlib.util.find_spec("django_tasks") is not None


class JobsConfig(AppConfig):
    name = "jobs"
    label = "orchestration_jobs"  # unique in a host project that has its own `jobs` app (docs/design.md)
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Every role registers the same handlers at start-up, so a type accepted at submit
        # is runnable by any worker.
        from jobs.handlers import load_handler_modules

        load_handler_modules()
        from jobs import bulk_actions  # noqa: F401  (registers its internal handler)

        checks.register(tasks_framework_problems)
        if _framework_installed():
            from jobs import transitions
            from jobs.task_backend import registry

            # Django tasks (JOB_TASK_MODULES), registered under their import path; a module that
            # does not import is reported by the checks (orchestration.E101), and workers refuse to start.
            registry.load_task_modules(keep_errors=True)
            transitions.on_job_ended(registry.is_task, registry.ended)
        connection_created.connect(_tune_session, dispatch_uid="jobs.tune_session")
        pre_migrate.connect(_no_statement_timeout, dispatch_uid="jobs.no_statement_timeout")
        post_migrate.connect(_statement_timeout_again, dispatch_uid="jobs.statement_timeout_again")
