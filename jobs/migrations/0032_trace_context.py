"""A job's trace context becomes the propagators' carrier (traceparent, tracestate, baggage),
a JSON object, instead of a 55-character traceparent. A traced job's old value is kept as
{"traceparent": ...}. ALTER ... TYPE rewrites the table without firing the tally triggers an
UPDATE would."""

from django.db import migrations, models

TO_CARRIER = """
ALTER TABLE {table} ALTER COLUMN traceparent TYPE jsonb
  USING CASE WHEN traceparent IS NULL THEN NULL ELSE jsonb_build_object('traceparent', traceparent) END;
ALTER TABLE {table} RENAME COLUMN traceparent TO trace_context;
"""
TO_TRACEPARENT = """
ALTER TABLE {table} RENAME COLUMN trace_context TO traceparent;
ALTER TABLE {table} ALTER COLUMN traceparent TYPE varchar(55) USING left(traceparent ->> 'traceparent', 55);
"""


class Migration(migrations.Migration):
    dependencies = [("orchestration_jobs", "0031_audit_log")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(TO_CARRIER.format(table="jobs_job"), TO_TRACEPARENT.format(table="jobs_job"))
            ],
            state_operations=[
                migrations.RemoveField("job", "traceparent"),
                migrations.AddField("job", "trace_context", models.JSONField(null=True, blank=True)),
            ],
        )
    ]
