# The audit log: one row per operator action, append-only (a trigger refuses UPDATE and DELETE).

import django.utils.timezone
from django.db import migrations, models


APPEND_ONLY = """
CREATE FUNCTION jobs_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER jobs_audit_append_only BEFORE UPDATE OR DELETE ON jobs_auditrecord
    FOR EACH ROW EXECUTE FUNCTION jobs_audit_append_only();
"""
DROP_APPEND_ONLY = """
DROP TRIGGER IF EXISTS jobs_audit_append_only ON jobs_auditrecord;
DROP FUNCTION IF EXISTS jobs_audit_append_only();
"""


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration_jobs', '0030_viewer_group'),
    ]

    operations = [
        migrations.CreateModel(
            name='AuditRecord',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('actor_id', models.IntegerField(blank=True, null=True)),
                ('actor', models.CharField(max_length=150)),
                ('action', models.CharField(max_length=64)),
                ('target_type', models.CharField(max_length=32)),
                ('target_id', models.CharField(max_length=200)),
                ('target_owner_id', models.IntegerField(blank=True, null=True)),
                ('source', models.CharField(max_length=16)),
                ('request_id', models.CharField(blank=True, default='', max_length=64)),
                ('trace_id', models.CharField(blank=True, default='', max_length=32)),
                ('details', models.JSONField(blank=True, default=dict)),
            ],
            options={
                'db_table': 'jobs_auditrecord',
                'ordering': ['-created_at', '-id'],
                'indexes': [models.Index(fields=['-created_at', '-id'], name='audit_created'), models.Index(fields=['actor_id', '-created_at'], name='audit_actor_created'), models.Index(fields=['target_type', 'target_id'], name='audit_target'), models.Index(fields=['action', '-created_at'], name='audit_action_created')],
            },
        ),
        migrations.RunSQL(APPEND_ONLY, DROP_APPEND_ONLY),
    ]
