# Built CONCURRENTLY (outside a transaction): on a table of millions of jobs a plain CREATE
# INDEX would block every submit and transition until it finished.

import django.db.models.functions.comparison
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0014_v7_ids"),
        ("orchestration_workflows", "0003_v7_ids"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                models.F("owner"),
                models.F("concurrency_key"),
                django.db.models.functions.comparison.Coalesce("run_at", "created_at"),
                condition=models.Q(
                    ("breaker_held_at__isnull", True),
                    ("concurrency_key__isnull", False),
                    ("dispatch_token__isnull", True),
                    ("status", "PENDING"),
                ),
                name="job_keyed_held",
            ),
        ),
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(
                    ("concurrency_key__isnull", False),
                    ("dispatch_token__isnull", False),
                    ("status__in", ["PENDING", "QUEUED"]),
                ),
                fields=["owner", "concurrency_key"],
                name="job_keyed_dispatched",
            ),
        ),
        RemoveIndexConcurrently(model_name="job", name="job_keyed_waiting"),
    ]
