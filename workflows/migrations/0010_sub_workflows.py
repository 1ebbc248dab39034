# Sub-workflows: a child workflow's parent step. The index is built CONCURRENTLY: the workflow
# table is written by every task's end.

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('orchestration_workflows', '0009_map_steps'),
    ]

    operations = [
        migrations.AddField(
            model_name='workflow',
            name='parent_task',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='orchestration_workflows.workflowtask'),
        ),
        migrations.AlterField(
            model_name='workflowtask',
            name='kind',
            field=models.CharField(choices=[('job', 'Job'), ('wait', 'Wait'), ('approval', 'Approval'), ('map', 'Map'), ('workflow', 'Workflow')], db_default='job', default='job', max_length=16),
        ),
        AddIndexConcurrently(
            model_name='workflow',
            index=models.Index(condition=models.Q(('parent_task__isnull', False)), fields=['parent_task'], name='workflow_parent_task'),
        ),
    ]
