"""A workflow's trace context becomes the propagators' carrier, as its jobs' did (jobs 0032)."""

from importlib import import_module

from django.db import migrations, models

SQL = import_module("jobs.migrations.0032_trace_context")  # the same statements, on this table


class Migration(migrations.Migration):
    dependencies = [("orchestration_workflows", "0010_sub_workflows"), ("orchestration_jobs", "0032_trace_context")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    SQL.TO_CARRIER.format(table="workflows_workflow"), SQL.TO_TRACEPARENT.format(table="workflows_workflow")
                )
            ],
            state_operations=[
                migrations.RemoveField("workflow", "traceparent"),
                migrations.AddField("workflow", "trace_context", models.JSONField(null=True, blank=True)),
            ],
        )
    ]
