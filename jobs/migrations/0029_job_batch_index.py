# A batch's jobs by status (its counts of waiting and running jobs, its cancel). Built
# CONCURRENTLY, as 0015: a plain CREATE INDEX would block every submit and transition.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_jobs", "0028_batches"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="job",
            index=models.Index(
                condition=models.Q(("batch_id__isnull", False)), fields=["batch_id", "status"], name="job_batch_status"
            ),
        ),
    ]
