"""Wake the relay the moment outbox rows commit: a statement-level trigger NOTIFYs once per
INSERT statement (a 1,000-row COPY is one notification), delivered at commit."""

from django.db import migrations

SQL = """
CREATE FUNCTION jobs_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobs_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_outbox_notify AFTER INSERT ON jobs_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_outbox_notify();
"""

REVERSE = """
DROP TRIGGER IF EXISTS jobs_outbox_notify ON jobs_outbox;
DROP FUNCTION IF EXISTS jobs_outbox_notify();
"""


class Migration(migrations.Migration):
    dependencies = [("orchestration_jobs", "0001_initial")]
    operations = [migrations.RunSQL(SQL, REVERSE)]
