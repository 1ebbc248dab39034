# A workflow's overall deadline: a nullable column (no rewrite), and the deadline scan's index,
# built CONCURRENTLY (the workflows table is written by every workflow job's end).

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_workflows", "0006_waking_index"),
    ]

    operations = [
        migrations.AddField(
            model_name="workflow",
            name="deadline_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        AddIndexConcurrently(
            model_name="workflow",
            index=models.Index(
                condition=models.Q(("deadline_at__isnull", False), ("status", "RUNNING")),
                fields=["deadline_at"],
                name="workflow_running_deadline",
            ),
        ),
    ]
