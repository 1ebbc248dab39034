"""A workflow's trace context (W3C traceparent of its submit): its task and compensation jobs
are released into that trace, whichever process releases them."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("orchestration_workflows", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="workflow",
            name="traceparent",
            field=models.CharField(blank=True, max_length=55, null=True),
        ),
    ]
