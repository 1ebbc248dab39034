"""Migrations: they agree with the models (`makemigrations --check`), and they are live-safe
(docs/design.md, "Migrations"): an index added to or dropped from a table the pipeline writes
for every job is built or dropped CONCURRENTLY, so a deploy never blocks submits or workers."""

from __future__ import annotations

from collections.abc import Iterator
from io import StringIO

import pytest
from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.core.management import call_command
from django.db import migrations, models
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations.base import Operation

OUR_APPS = {"jobs", "workflows", "orchestration", "logs", "metrics", "dashboard"}
# Written for every job (a submit, a claim, an outcome): a lock on one stops the pipeline.
HOT_MODELS = {("jobs", "job"), ("jobs", "jobattempt"), ("jobs", "outbox"), ("workflows", "workflow"),
              ("workflows", "workflowtask")}  # fmt: skip


@pytest.mark.django_db
def test_the_models_and_the_migrations_agree():
    out = StringIO()
    try:
        call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)
    except SystemExit as exc:  # exit 1: a model changed without its migration
        pytest.fail(f"makemigrations --check found changes with no migration:\n{out.getvalue()}")
        raise AssertionError from exc


def database_operations(operations: list[Operation]) -> Iterator[Operation]:
    """What a migration does to the database (inside SeparateDatabaseAndState too)."""
    for op in operations:
        if isinstance(op, migrations.SeparateDatabaseAndState):
            yield from database_operations(op.database_operations)
        else:
            yield op


def indexed(field: object) -> bool:
    return bool(
        getattr(field, "db_index", False) or getattr(field, "unique", False) or getattr(field, "primary_key", False)
    )


def blocking_index_change(op: Operation, app: str, created: set[str], was_indexed: bool = False) -> str | None:
    """Why `op` takes a lock on a hot table while it builds or drops an index, or None.
    `was_indexed`: for an AlterField, whether the field had an index before it."""
    model = getattr(op, "model_name", None) or getattr(op, "name", None)
    if model is None or (app, model.lower()) not in HOT_MODELS or model.lower() in created:
        return None
    if isinstance(op, migrations.AddIndex | migrations.RemoveIndex) and not isinstance(
        op, AddIndexConcurrently | RemoveIndexConcurrently
    ):
        return f"{type(op).__name__} {getattr(op, 'name', '') or op.index.name}: use {type(op).__name__}Concurrently"
    if isinstance(op, migrations.AddConstraint) and isinstance(op.constraint, models.UniqueConstraint):
        return f"AddConstraint {op.constraint.name}: build its unique index CONCURRENTLY first"
    field = getattr(op, "field", None)
    changed = isinstance(op, migrations.AddField) or (isinstance(op, migrations.AlterField) and not was_indexed)
    if changed and indexed(field):
        return f"{type(op).__name__} {op.name} builds an index under a lock: db_index=False, then concurrently"
    if isinstance(op, migrations.AlterField) and was_indexed and not indexed(field):
        return f"AlterField {op.name} drops an index under a lock: DROP INDEX CONCURRENTLY instead"
    return None


def test_index_changes_on_hot_tables_are_concurrent():
    loader = MigrationLoader(None, ignore_no_migrations=True)  # the files only, no database
    problems = []
    for (app, name), migration in sorted(loader.disk_migrations.items()):
        if app not in OUR_APPS:
            continue
        before = loader.project_state((app, name), at_end=False)
        created = {op.name.lower() for op in migration.operations if isinstance(op, migrations.CreateModel)}
        for op in database_operations(migration.operations):
            was = None
            if isinstance(op, migrations.AlterField) and (app, op.model_name.lower()) in before.models:
                was = before.models[app, op.model_name.lower()].fields.get(op.name)
            if problem := blocking_index_change(op, app, created, was_indexed=indexed(was)):
                problems.append(f"{app}.{name}: {problem}")
    assert problems == []


def test_the_rule_catches_a_plain_index_on_a_hot_table():
    plain = migrations.AddIndex("job", models.Index(fields=["queue"], name="job_q"))
    assert "use AddIndexConcurrently" in (blocking_index_change(plain, "jobs", set()) or "")
    assert blocking_index_change(plain, "jobs", {"job"}) is None  # a table made in the same migration is empty
    concurrent = AddIndexConcurrently("job", models.Index(fields=["queue"], name="job_q"))
    assert blocking_index_change(concurrent, "jobs", set()) is None
    fk = migrations.AddField("job", "batch", models.ForeignKey("jobs.job", on_delete=models.CASCADE))
    assert "db_index=False, then concurrently" in (blocking_index_change(fk, "jobs", set()) or "")
    unindexed = migrations.AlterField("job", "owner", models.ForeignKey("auth.user", models.CASCADE, db_index=False))
    assert "DROP INDEX CONCURRENTLY" in (blocking_index_change(unindexed, "jobs", set(), was_indexed=True) or "")
