"""Unique app labels (jobs.labels): a host project's own `jobs` or `workflows` app cannot
collide with ours, the tables keep their names, and an existing database recorded under the
old labels upgrades in place with `manage.py migrate`."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from jobs.labels import rename_legacy_labels
from jobs.models import Job
from workflows.models import Workflow

pytestmark = pytest.mark.django_db

OURS = ("jobs", "workflows", "orchestration", "logs", "metrics", "dashboard")


def recorded(app: str) -> set[str]:
    with connection.cursor() as cur:
        cur.execute("SELECT name FROM django_migrations WHERE app = %s", [app])
        return {row[0] for row in cur.fetchall()}


def content_types(label: str) -> set[str]:
    with connection.cursor() as cur:
        cur.execute("SELECT model FROM django_content_type WHERE app_label = %s", [label])
        return {row[0] for row in cur.fetchall()}


def as_before_the_rename() -> None:
    """The database as a deployment made before the labels changed left it."""
    with connection.cursor() as cur:
        for old, new in (("jobs", "orchestration_jobs"), ("workflows", "orchestration_workflows")):
            cur.execute("UPDATE django_migrations SET app = %s WHERE app = %s", [old, new])
            cur.execute("UPDATE django_content_type SET app_label = %s WHERE app_label = %s", [old, new])


def unapplied() -> list[str]:
    executor = MigrationExecutor(connection)
    return [str(m) for m, _ in executor.migration_plan(executor.loader.graph.leaf_nodes())]


def test_no_label_of_ours_is_a_name_a_host_app_would_have_and_the_tables_keep_theirs():
    labels = {config.name: config.label for config in apps.get_app_configs()}
    assert {labels[name] for name in OURS} == {
        "orchestration_jobs", "orchestration_workflows", "orchestration", "orchestration_logs",
        "orchestration_metrics", "orchestration_dashboard",
    }  # fmt: skip
    assert (Job._meta.db_table, Workflow._meta.db_table) == ("jobs_job", "workflows_workflow")


def test_a_database_recorded_under_the_old_labels_upgrades_in_place():
    jobs_migrations, jobs_types = recorded("orchestration_jobs"), content_types("orchestration_jobs")
    assert "0001_initial" in jobs_migrations
    assert "job" in jobs_types
    as_before_the_rename()
    assert len(unapplied()) > 20  # what a plain migrate would try to do again: create every table

    assert rename_legacy_labels(connection) == ["jobs", "workflows"]
    assert recorded("orchestration_jobs") == jobs_migrations
    assert content_types("orchestration_jobs") == jobs_types  # permissions and admin log entries follow them
    assert recorded("jobs") == set() == content_types("jobs")
    assert unapplied() == []
    assert rename_legacy_labels(connection) == []  # once


def test_migrate_renames_them_first(capsys):
    as_before_the_rename()
    call_command("migrate", verbosity=1)
    assert "Renamed the old app labels ['jobs', 'workflows']" in capsys.readouterr().out
    assert unapplied() == []


def test_a_hosts_own_app_of_an_old_name_is_left_alone():
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO django_migrations (app, name, applied) VALUES ('jobs', '0001_initial', now()),"
            " ('jobs', '0002_host_postings', now())"
        )
    assert rename_legacy_labels(connection) == []
    assert recorded("jobs") == {"0001_initial", "0002_host_postings"}


def test_old_admin_links_land_on_the_new_pages(client):
    response = client.get("/admin/jobs/job/?status=DEAD_LETTER")
    assert response.status_code == 301
    assert response["Location"] == "/admin/orchestration_jobs/job/?status=DEAD_LETTER"
    assert client.get("/admin/workflows/workflow/")["Location"] == "/admin/orchestration_workflows/workflow/"
