# Map steps: their children's batch, and how far the saga got undoing them. The index is built
# CONCURRENTLY: workflowtask is written by every workflow job's end.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ('orchestration_workflows', '0008_approvals'),
    ]

    operations = [
        migrations.AddField(
            model_name='workflowtask',
            name='batch_id',
            field=models.UUIDField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='workflowtask',
            name='undo_after',
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name='workflowtask',
            name='kind',
            field=models.CharField(choices=[('job', 'Job'), ('wait', 'Wait'), ('approval', 'Approval'), ('map', 'Map')], db_default='job', default='job', max_length=16),
        ),
        AddIndexConcurrently(
            model_name='workflowtask',
            index=models.Index(condition=models.Q(('batch_id__isnull', False)), fields=['batch_id'], name='workflowtask_map_batch'),
        ),
    ]
