# Per-owner admins (jobs.visibility): who administers whose tenant.
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('orchestration_jobs', '0032_trace_context'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='OwnerAdmin',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now, editable=False)),
                ('admin', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='administers', to=settings.AUTH_USER_MODEL)),
                ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='admins', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'db_table': 'jobs_owneradmin',
                'constraints': [models.UniqueConstraint(fields=('admin', 'owner'), name='owneradmin_admin_owner_uniq'), models.CheckConstraint(condition=models.Q(('admin', models.F('owner')), _negated=True), name='owneradmin_not_self')],
            },
        ),
    ]
