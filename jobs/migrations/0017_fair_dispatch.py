# The outbox becomes the backlog the relay picks from fairly (queue, owner, priority): its
# rows carry those three, filled from the envelope for rows already waiting. The indexes are
# built CONCURRENTLY: the outbox is written by every submit while they are built.

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

BACKFILL = """
UPDATE jobs_outbox AS o SET queue = j.queue, owner_id = j.owner_id, priority = j.priority
  FROM jobs_job j
 WHERE o.job_id = j.id AND o.topic = 'jobs' AND o.queue IS NULL
"""


class Migration(migrations.Migration):
    atomic = False  # indexes on a live table are built CONCURRENTLY, which no transaction may hold
    dependencies = [
        ("orchestration_jobs", "0016_owner_breaker_held"),
        ("orchestration_workflows", "0003_v7_ids"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(model_name="outbox", name="owner_id", field=models.IntegerField(blank=True, null=True)),
        migrations.AddField(model_name="outbox", name="priority", field=models.SmallIntegerField(blank=True, null=True)),
        migrations.AddField(
            model_name="outbox", name="queue", field=models.CharField(blank=True, max_length=100, null=True)
        ),
        migrations.RunSQL(BACKFILL, reverse_sql=migrations.RunSQL.noop),
        AddIndexConcurrently(
            model_name="outbox",
            index=models.Index(
                models.F("queue"),
                models.F("owner_id"),
                models.OrderBy(models.F("priority"), descending=True),
                models.F("id"),
                condition=models.Q(("queue__isnull", False), ("topic", "jobs")),
                name="outbox_fair",
            ),
        ),
        AddIndexConcurrently(
            model_name="outbox",
            index=models.Index(
                condition=models.Q(("queue__isnull", False), ("topic", "jobs")), fields=["queue", "id"], name="outbox_queue"
            ),
        ),
        AddIndexConcurrently(
            model_name="outbox",
            index=models.Index(condition=models.Q(("queue__isnull", True)), fields=["id"], name="outbox_unrouted"),
        ),
    ]
