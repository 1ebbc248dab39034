"""The Celery app shared by every role. Workers and the bridge import it; the one task lives
in `orchestration.tasks`."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("orchestration")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fix-up closes the database connection before and after every task unless
# told otherwise: a new PostgreSQL connection per job. Reuse it; orchestration.worker checks
# it at the start of each task (close_old_connections), as Django does per request.
app.conf["CELERY_DB_REUSE_MAX"] = 10_000
app.autodiscover_tasks()
