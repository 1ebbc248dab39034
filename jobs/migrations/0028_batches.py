"""Batches: their table, a nullable job column (added without a rewrite), and their counts as
deltas: its jobs added (status TOTAL), appended by 0012's insert tally trigger (one row a
statement, grouped: a bulk submit scans its new rows once), and its jobs reaching or leaving a
terminal status, by a row trigger whose `WHEN` is checked before any function is called, so a
job outside a batch costs nothing on its many small updates. A job's delete (retention
archiving it) leaves its batch's counts alone. The index on the column comes in 0029, built
concurrently."""

import config.ids
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TERMINAL = "('SUCCEEDED', 'DEAD_LETTER', 'CANCELLED')"

# 0012's insert tally, and a batch's jobs added.
INSERT_TALLY = """
CREATE OR REPLACE FUNCTION jobs_tally_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO jobs_jobcountdelta (owner_id, status, n)
    SELECT owner_id, status, count(*) FROM new_rows GROUP BY owner_id, status;
    {batch}
    RETURN NULL;
END $$;
"""
BATCH_ADDED = """INSERT INTO jobs_batchdelta (batch_id, status, n)
    SELECT batch_id, 'TOTAL', count(*) FROM new_rows WHERE batch_id IS NOT NULL GROUP BY batch_id;"""

FORWARD = INSERT_TALLY.format(batch=BATCH_ADDED) + f"""
-- A batch's job that reached a terminal status (+1) or left one (-1: a retry).
CREATE FUNCTION jobs_batch_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN {TERMINAL} THEN
        INSERT INTO jobs_batchdelta (batch_id, status, n) VALUES (NEW.batch_id, NEW.status, 1);
    END IF;
    IF OLD.status IN {TERMINAL} THEN
        INSERT INTO jobs_batchdelta (batch_id, status, n) VALUES (NEW.batch_id, OLD.status, -1);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_batch_moved AFTER UPDATE OF status ON jobs_job
    FOR EACH ROW WHEN (NEW.batch_id IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
                       AND (NEW.status IN {TERMINAL} OR OLD.status IN {TERMINAL}))
    EXECUTE FUNCTION jobs_batch_moved();
"""  # noqa: S608 (constants only)
BACKWARD = INSERT_TALLY.format(batch="") + """
DROP TRIGGER IF EXISTS jobs_batch_moved ON jobs_job;
DROP FUNCTION IF EXISTS jobs_batch_moved();
"""


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
