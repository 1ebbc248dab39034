# A running job's progress (`ctx.progress`): three columns, nullable or with a constant
# default, which PostgreSQL adds without a rewrite or a long lock.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration_jobs", "0025_unique_lock"),
    ]

    operations = [
        migrations.AddField(model_name="job", name="progress", field=models.FloatField(blank=True, null=True)),
        migrations.AddField(
            model_name="job",
            name="progress_message",
            field=models.CharField(blank=True, db_default="", default="", max_length=200),
        ),
        migrations.AddField(model_name="job", name="progress_at", field=models.DateTimeField(blank=True, null=True)),
    ]
