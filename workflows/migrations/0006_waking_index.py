# The scheduler's wake scan over waiting steps. Built CONCURRENTLY: workflowtask is written by
# every workflow job's end.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("orchestration_workflows", "0005_wait_steps"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="workflowtask",
            index=models.Index(condition=models.Q(("state", "WAITING")), fields=["wake_at"], name="workflowtask_waking"),
        ),
    ]
