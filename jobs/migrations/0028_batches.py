"""Batches: their table, a nullable job column (added without a rewrite), and their counts,
kept by the tally triggers of 0012 (replaced here with versions that also append a batch's
deltas: its jobs added, as status TOTAL, and its jobs reaching or leaving a terminal status).
A job's delete (retention archiving it) leaves its batch's counts alone. The index on the
column comes in 0029, built concurrently."""

from importlib import import_module

import config.ids
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


_0012 = import_module(".0012_tallies", __package__)
TERMINAL, METRICS = _0012.TERMINAL, _0012.METRICS

INSERT_FUNCTION = """
CREATE OR REPLACE FUNCTION jobs_tally_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs_jobcountdelta (owner_id, status, n)
    SELECT owner_id, status, count(*) FROM new_rows GROUP BY owner_id, status;
    {batch}
    RETURN NULL;
END $$;
"""
BATCH_INSERT = """INSERT INTO jobs_batchdelta (batch_id, status, n)
    SELECT batch_id, 'TOTAL', count(*) FROM new_rows WHERE batch_id IS NOT NULL GROUP BY batch_id;"""

UPDATE_FUNCTION = f"""
CREATE OR REPLACE FUNCTION jobs_tally_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs_jobcountdelta (owner_id, status, n)
    SELECT owner_id, status, sum(d) FROM (
        SELECT owner_id, status, -1 AS d FROM old_rows
        UNION ALL
        SELECT owner_id, status, 1 FROM new_rows
    ) c GROUP BY owner_id, status HAVING sum(d) <> 0;
    -- Jobs that reached a terminal status in this statement: the minute they finished in.
    INSERT INTO jobs_jobminutedelta (minute, owner_id, status, metric, bucket, n)
    SELECT date_trunc('minute', n.finished_at), n.owner_id, n.status, m.metric, m.bucket, count(*)
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
     {METRICS.format(j='n')}
     WHERE n.status IN {TERMINAL} AND o.status NOT IN {TERMINAL}
       AND n.finished_at IS NOT NULL AND m.bucket IS NOT NULL
     GROUP BY 1, 2, 3, 4, 5;
    {{batch}}
    RETURN NULL;
END $$;
"""  # noqa: S608 (constants only)
# A batch's jobs that reached a terminal status (+1) or left one (-1: a retry) in the statement.
BATCH_UPDATE = f"""INSERT INTO jobs_batchdelta (batch_id, status, n)
    SELECT n.batch_id, s.status, sum(s.d)
      FROM new_rows n
      JOIN old_rows o ON o.id = n.id
     CROSS JOIN LATERAL (VALUES (n.status, 1), (o.status, -1)) AS s (status, d)
     WHERE n.batch_id IS NOT NULL AND n.status <> o.status AND s.status IN {TERMINAL}
     GROUP BY 1, 2;"""  # noqa: S608 (constants only)

FORWARD = INSERT_FUNCTION.format(batch=BATCH_INSERT) + UPDATE_FUNCTION.format(batch=BATCH_UPDATE)
BACKWARD = INSERT_FUNCTION.format(batch="") + UPDATE_FUNCTION.format(batch="")


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration_jobs', '0027_rate_limits'),
        ('orchestration_workflows', '0004_task_archived'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='Batch',
            fields=[
                ('id', models.UUIDField(default=config.ids.new_id, editable=False, primary_key=True, serialize=False)),
                ('description', models.CharField(blank=True, default='', max_length=200)),
                ('on_success', models.JSONField(blank=True, null=True)),
                ('on_complete', models.JSONField(blank=True, null=True)),
                ('on_success_job_id', models.UUIDField(blank=True, null=True)),
                ('on_complete_job_id', models.UUIDField(blank=True, null=True)),
                ('closed_at', models.DateTimeField(blank=True, null=True)),
                ('cancelled_at', models.DateTimeField(blank=True, null=True)),
                ('completed_at', models.DateTimeField(blank=True, null=True)),
                ('check_needed', models.BooleanField(default=False)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'db_table': 'jobs_batch',
                'ordering': ['-created_at'],
            },
        ),
        migrations.CreateModel(
            name='BatchCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('batch_id', models.UUIDField()),
                ('status', models.CharField(max_length=16)),
                ('n', models.BigIntegerField(default=0)),
            ],
            options={
                'db_table': 'jobs_batchcount',
            },
        ),
        migrations.CreateModel(
            name='BatchDelta',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('batch_id', models.UUIDField()),
                ('status', models.CharField(max_length=16)),
                ('n', models.BigIntegerField()),
            ],
            options={
                'db_table': 'jobs_batchdelta',
            },
        ),
        migrations.AddField(
            model_name='job',
            name='batch_id',
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='batch',
            name='owner',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddConstraint(
            model_name='batchcount',
            constraint=models.UniqueConstraint(fields=('batch_id', 'status'), name='batchcount_batch_status_uniq'),
        ),
        migrations.AddIndex(
            model_name='batch',
            index=models.Index(fields=['owner', '-created_at'], name='batch_owner_created'),
        ),
        migrations.AddIndex(
            model_name='batch',
            index=models.Index(condition=models.Q(('check_needed', True)), fields=['check_needed'], name='batch_check_needed'),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
