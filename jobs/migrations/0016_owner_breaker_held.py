# Breakers are each owner's own (orchestration.breaker): the breaker scan walks (owner, type)
# pairs. Built CONCURRENTLY, as 0015: a plain CREATE INDEX would block every submit and
# transition on a large table until it finished.

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0015_keyed_held_index"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("breaker_held_at__isnull", False), ("status", "PENDING")),
                fields=["owner", "type", "breaker_held_at"],
                name="job_owner_breaker_held",
            ),
        ),
        RemoveIndexConcurrently(model_name="job", name="job_breaker_held"),
    ]
