# job_keyed_held's condition gains "not held for its owner's share of the workers"
# (models.HELD_SQL), so the held scan's statements match it exactly. Built CONCURRENTLY under
# a new name, the old one dropped the same way, then the new one takes the old name.

import django.db.models.functions.comparison
from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0020_slot_held"),
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
                    ("slot_held_at__isnull", True),
                    ("status", "PENDING"),
                ),
                name="job_keyed_held_2",
            ),
        ),
        RemoveIndexConcurrently(model_name="job", name="job_keyed_held"),
        migrations.RenameIndex(model_name="job", new_name="job_keyed_held", old_name="job_keyed_held_2"),
    ]
