"""Django's `migrate`, after renaming the apps' old labels in the database (`jobs.labels`):
an existing deployment upgrades in place with the command it always ran."""

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import connections

from jobs.labels import rename_legacy_labels


class Command(DjangoMigrate):
    def handle(self, *args: Any, **options: Any) -> None:
        renamed = rename_legacy_labels(connections[options["database"]])
        if renamed and options["verbosity"] >= 1:
            self.stdout.write(f"Renamed the old app labels {renamed} in django_migrations and django_content_type.")
        super().handle(*args, **options)
