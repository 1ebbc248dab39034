# The failed attempt's exception class, recorded by the worker from the exception (a Django
# task's TaskError.exception_class_path). A column with a constant default: PostgreSQL adds it
# without rewriting the table or holding its lock for longer than a catalogue change.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration_jobs", "0022_held_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="jobattempt",
            name="error_class",
            field=models.CharField(blank=True, db_default="", default="", max_length=255),
        ),
    ]
