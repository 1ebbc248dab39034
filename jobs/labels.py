"""The apps' labels, made unique for a host project that has its own `jobs` or `workflows`
app (`orchestration_jobs`, `orchestration_workflows`, ...; docs/design.md). Their tables keep
their names (`Meta.db_table`), so only Django's own bookkeeping knows the old labels: the
`django_migrations` rows and the content types (which permissions and admin log entries
point at). `migrate` renames those first (`jobs/management/commands/migrate.py`), so an
existing deployment upgrades in place with the `manage.py migrate` it always ran.

A label is renamed only when every migration the database records under it is one of ours
(by name) and none is recorded under the new label yet: a host's own app of the old name,
with migrations of its own, is left alone.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.migrations.loader import MigrationLoader

# Old label → new, for the apps that have migrations (the others never wrote a row).
RENAMED = {"jobs": "orchestration_jobs", "workflows": "orchestration_workflows"}


def rename_legacy_labels(connection: Any) -> list[str]:
    """Rename the old labels' rows in `connection`'s database; returns the labels renamed."""
    tables = set(connection.introspection.table_names())
    if "django_migrations" not in tables:
        return []  # a new database
    ours = MigrationLoader(None, ignore_no_migrations=True).disk_migrations
    renamed = []
    with transaction.atomic(using=connection.alias), connection.cursor() as cur:
        for old, new in RENAMED.items():
            cur.execute("SELECT name FROM django_migrations WHERE app = %s", [old])
            recorded = {row[0] for row in cur.fetchall()}
            if not recorded or not recorded <= {name for app, name in ours if app == new}:
                continue  # nothing of ours under the old label (or a host's own app of that name)
            cur.execute("SELECT 1 FROM django_migrations WHERE app = %s LIMIT 1", [new])
            if cur.fetchone():
                continue  # renamed already
            cur.execute("UPDATE django_migrations SET app = %s WHERE app = %s", [new, old])
            if "django_content_type" in tables:
                models = [model._meta.model_name for model in _models_of(new)]
                cur.execute(
                    "UPDATE django_content_type SET app_label = %s WHERE app_label = %s AND model = ANY(%s)"
                    " AND NOT EXISTS (SELECT 1 FROM django_content_type WHERE app_label = %s)",
                    [new, old, models, new],
                )
            renamed.append(old)
    return renamed


def _models_of(label: str) -> list[Any]:
    from django.apps import apps

    return list(apps.get_app_config(label).get_models())
