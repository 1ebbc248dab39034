# Jobs held for their owner's share of a queue's workers (orchestration.fair_slots). The
# column is NULL for every existing row (no table rewrite); the index is built CONCURRENTLY,
# as 0015's: a plain CREATE INDEX would block every submit and transition on a large table.

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0019_owner_share"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(model_name="job", name="slot_held_at", field=models.DateTimeField(blank=True, null=True)),
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("slot_held_at__isnull", False), ("status", "PENDING")),
                fields=["owner", "queue", "type", "slot_held_at"],
                name="job_slot_held",
            ),
        ),
    ]
