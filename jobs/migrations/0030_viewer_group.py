"""The `viewer` group: operators who see what staff see and may do nothing (jobs.visibility).
Add a user to it in the admin (Authentication and Authorization → Groups)."""

from django.db import migrations


def create(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name="viewer")


def remove(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="viewer").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("orchestration_jobs", "0029_job_batch_index"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create, remove)]
