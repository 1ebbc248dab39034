"""Concurrency slots become each owner's own (`<owner id>:<concurrency key>`): one tenant's
jobs under a key name another tenant also uses no longer take or widen that tenant's slots.
The running counts are rebuilt under the new keys from the jobs that run now."""

from django.db import migrations, models

REBUILD = """
DELETE FROM jobs_concurrencyslot;
INSERT INTO jobs_concurrencyslot (key, running)
SELECT owner_id::text || ':' || concurrency_key, count(*) FROM jobs_job
 WHERE status = 'RUNNING' AND concurrency_key IS NOT NULL
 GROUP BY 1;
"""


class Migration(migrations.Migration):
    dependencies = [("orchestration_jobs", "0008_fewer_indexes_per_status_change")]

    operations = [
        migrations.AlterField(
            model_name="concurrencyslot",
            name="key",
            field=models.CharField(max_length=255, primary_key=True, serialize=False),
        ),
        migrations.RunSQL(REBUILD, migrations.RunSQL.noop),
    ]
