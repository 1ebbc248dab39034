# Wait steps: columns of workflowtask (nullable, or with a constant default: no rewrite) and the
# signals table. The wake scan's index comes in 0006, built concurrently.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration_jobs', '0029_job_batch_index'),
        ('orchestration_workflows', '0004_task_archived'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='WorkflowSignal',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('name', models.CharField(max_length=200)),
                ('payload', models.JSONField(default=dict)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'db_table': 'workflows_workflowsignal',
                'ordering': ['workflow', 'id'],
            },
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='ended_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='kind',
            field=models.CharField(choices=[('job', 'Job'), ('wait', 'Wait')], db_default='job', default='job', max_length=16),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='result',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='state',
            field=models.CharField(choices=[('NONE', 'None'), ('WAITING', 'Waiting'), ('SUCCEEDED', 'Succeeded'), ('FAILED', 'Failed'), ('CANCELLED', 'Cancelled')], db_default='NONE', default='NONE', max_length=16),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='wait',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='wake_at',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflowsignal',
            name='sent_by',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AddField(
            model_name='workflowsignal',
            name='task',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='orchestration_workflows.workflowtask'),
        ),
        migrations.AddField(
            model_name='workflowsignal',
            name='workflow',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='signals', to='orchestration_workflows.workflow'),
        ),
        migrations.AddIndex(
            model_name='workflowsignal',
            index=models.Index(fields=['workflow', 'name'], name='workflowsignal_name'),
        ),
    ]
