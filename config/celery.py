"""The Celery app shared by every role. Workers and the bridge import it; tasks live in
`orchestration.tasks` (added with the dispatch pipeline)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("orchestration")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
