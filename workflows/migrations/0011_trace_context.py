"""A workflow's trace context becomes the propagators' carrier, as its jobs' did (jobs 0032):
a JSON object instead of a 55-character traceparent, a traced workflow's old value kept as
{"traceparent": ...}."""

from django.db import migrations, models

TO_CARRIER = """
ALTER TABLE workflows_workflow ALTER COLUMN traceparent TYPE jsonb
  USING CASE WHEN traceparent IS NULL THEN NULL ELSE jsonb_build_object('traceparent', traceparent) END;
ALTER TABLE workflows_workflow RENAME COLUMN traceparent TO trace_context;
"""
TO_TRACEPARENT = """
ALTER TABLE workflows_workflow RENAME COLUMN trace_context TO traceparent;
ALTER TABLE workflows_workflow ALTER COLUMN traceparent TYPE varchar(55) USING left(traceparent ->> 'traceparent', 55);
"""


class Migration(migrations.Migration):
    dependencies = [("orchestration_workflows", "0010_sub_workflows"), ("orchestration_jobs", "0032_trace_context")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(TO_CARRIER, TO_TRACEPARENT)],
            state_operations=[
                migrations.RemoveField("workflow", "traceparent"),
                migrations.AddField("workflow", "trace_context", models.JSONField(null=True, blank=True)),
            ],
        )
    ]
