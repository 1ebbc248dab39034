"""A job's trace context (W3C traceparent of its submit), so retries and re-dispatches built
from the row continue the same trace. Nullable, no default: adding it rewrites nothing."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("orchestration_jobs", "0009_concurrency_slots_per_owner")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="traceparent",
            field=models.CharField(blank=True, max_length=55, null=True),
        ),
    ]
