"""The workflow page in the admin (with its graph) and `manage.py workflows`."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.workflows.conftest import run_all, task
from workflows.graph import GraphTask, depths, render_svg
from workflows.models import Workflow, WorkflowStatus

pytestmark = pytest.mark.django_db


def test_graph_columns_follow_depth_and_text_is_escaped():
    tasks = [GraphTask("a", [], "SUCCEEDED"), GraphTask("b", ["a"], "RUNNING"), GraphTask("<c>", ["a", "b"], "PENDING")]
    assert depths(tasks) == {"a": 0, "b": 1, "<c>": 2}
    svg = render_svg(tasks)
    assert svg.startswith("<svg")
    assert svg.count("<line") == 3
    assert "&lt;c&gt;" in svg
    assert "<c>" not in svg
    assert "#bbf7d0" in svg  # SUCCEEDED in green


def test_admin_shows_the_graph_and_the_tasks(client, staff, api):
    wf = api.post(
        "/api/v1/workflows/", {"name": "etl", "tasks": [task("extract"), task("load", "extract")]}, format="json"
    ).json()
    run_all()
    client.force_login(staff)
    html = client.get(f"/admin/orchestration_workflows/workflow/{wf['id']}/change/").content.decode()
    assert "<svg" in html
    assert "extract" in html
    assert "load" in html
    assert "SUCCEEDED" in html
    assert client.get("/admin/orchestration_workflows/workflow/").status_code == 200


def test_admin_is_for_staff_only(client, user):
    client.force_login(user)
    assert client.get("/admin/orchestration_workflows/workflow/").status_code == 302


def test_cli_submits_waits_and_shows(tmp_path, user):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"name": "cli", "tasks": [task("a"), task("b", "a")]}))
    out = io.StringIO()
    call_command("workflows", "submit", str(path), stdout=out)
    workflow_id = out.getvalue().strip()
    run_all()
    assert Workflow.objects.get(id=workflow_id).status == WorkflowStatus.SUCCEEDED
    shown = io.StringIO()
    call_command("workflows", "show", workflow_id, stdout=shown)
    assert json.loads(shown.getvalue())["tasks"][1]["status"] == "SUCCEEDED"


def test_cli_rejects_a_bad_workflow_naming_the_problem(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"tasks": [task("a", "ghost")]}))
    with pytest.raises(CommandError, match="unknown task 'ghost'"):
        call_command("workflows", "submit", str(path))
