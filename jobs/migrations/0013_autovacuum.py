"""Autovacuum for the hot tables, chosen for a table of tens of millions of rows.

PostgreSQL's defaults vacuum a table once 20 % of it is dead (and analyze at 10 %): at ten
million jobs that is two million dead rows before a vacuum, and a million changed before the
planner hears of it. Per table instead:

- jobs_job: vacuum at 2 % dead plus 10,000 rows, analyze at 1 %: every job is rewritten three
  times and retention deletes in batches, so dead rows come steadily; index scans by status
  must not wade through them.
- jobs_jobattempt: vacuum at 5 %: inserted once, updated once (HOT, fillfactor 80), deleted by
  retention.
- jobs_outbox and the tally deltas: small tables with all their rows deleted within seconds
  (relay, fold); vacuum every 1,000 dead rows whatever the size, and without cost delay, so
  the relay's and the fold's scans never read a long tail of dead rows.
"""

from django.db import migrations

SETTINGS = {
    "jobs_job": "autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 10000, "
    "autovacuum_analyze_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.05",
    "jobs_jobattempt": "autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02",
    "jobs_outbox": "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_cost_delay = 0",
    "jobs_jobcountdelta": "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_cost_delay = 0",
    "jobs_jobminutedelta": "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_cost_delay = 0",
}

RESET = (
    "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, "
    "autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_cost_delay"
)


class Migration(migrations.Migration):
    dependencies = [("orchestration_jobs", "0012_tallies")]

    operations = [
        migrations.RunSQL(f"ALTER TABLE {table} SET ({options})", f"ALTER TABLE {table} RESET ({RESET})")
        for table, options in SETTINGS.items()
    ]
