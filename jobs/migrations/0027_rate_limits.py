# Rate limits per key: two nullable job columns (added without a rewrite) and the table of
# declared limits.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration_jobs", "0026_job_progress"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="rate_limit_key",
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="rate_slot_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.CreateModel(
            name="RateLimit",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("pattern", models.CharField(max_length=200)),
                ("limit", models.PositiveIntegerField()),
                ("period_seconds", models.PositiveIntegerField()),
                ("burst", models.PositiveIntegerField(default=1)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "owner",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "db_table": "jobs_ratelimit",
                "constraints": [
                    models.UniqueConstraint(fields=("owner", "pattern"), name="ratelimit_owner_pattern_uniq"),
                    models.UniqueConstraint(
                        condition=models.Q(("owner__isnull", True)),
                        fields=("pattern",),
                        name="ratelimit_global_pattern_uniq",
                    ),
                    models.CheckConstraint(
                        condition=models.Q(("limit__gte", 1), ("period_seconds__gte", 1), ("burst__gte", 1)),
                        name="ratelimit_positive",
                    ),
                ],
            },
        ),
    ]
