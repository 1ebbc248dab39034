# Unique jobs (issue 30): the register of unique keys and who holds each until when. A new,
# empty table: nothing to build concurrently.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration_jobs", "0024_blocked_key"),
    ]

    operations = [
        migrations.CreateModel(
            name="UniqueLock",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("owner_id", models.IntegerField()),
                ("key", models.CharField(max_length=200)),
                ("job_id", models.UUIDField()),
                ("expires_at", models.DateTimeField()),
            ],
            options={
                "db_table": "jobs_uniquelock",
                "constraints": [
                    models.UniqueConstraint(fields=("owner_id", "key"), name="uniquelock_owner_key_uniq")
                ],
            },
        ),
    ]
