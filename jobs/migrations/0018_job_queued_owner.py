# What each queue's window holds, per owner (the relay's room and lanes). Built CONCURRENTLY,
# as 0015: a plain CREATE INDEX would block every submit and transition on a large table.

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0017_fair_dispatch"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "QUEUED")), fields=["queue", "owner"], name="job_queued_owner"
            ),
        ),
    ]
