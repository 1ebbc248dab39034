"""`manage.py workflows ...`: submit and inspect workflows from a shell.

workflows submit FILE.json [--owner USER] [--wait [--timeout S]]   (FILE "-" reads stdin)
workflows show ID
workflows cancel ID
workflows signal ID NAME [--payload JSON] [--owner USER]   (completes the step waiting for NAME)
workflows approve ID TASK --as USER [--reject] [--comment TEXT]   (a decision on an approval step)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from config.errors import StateConflict
from jobs.cli import OPERATOR, cli_owner, dump, operator_command, wait_for_end
from workflows import selectors, services, steps
from workflows.errors import NoSuchApproval, NoSuchSignal, NotAnApprover, WorkflowNotFound
from workflows.models import WORKFLOW_TERMINAL, Decision, Workflow, WorkflowStatus
from workflows.serializers import WorkflowDetailSerializer, WorkflowInputSerializer


class Command(BaseCommand):
    help = "Submit, show and cancel workflows."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        submit = sub.add_parser("submit", help="submit a workflow from a JSON file (the API's body)")
        submit.add_argument("file", help='path of the JSON body, or "-" for standard input')
        submit.add_argument("--owner", help="username (default: the first superuser)")
        submit.add_argument("--wait", action="store_true", help="wait until it finishes; print its tasks")
        submit.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (with --wait)")
        for name in ("show", "cancel"):
            p = sub.add_parser(name, help=f"{name} one workflow")
            p.add_argument("workflow_id")
        signal = sub.add_parser("signal", help="send a signal to the step that waits for it")
        signal.add_argument("workflow_id")
        signal.add_argument("name")
        signal.add_argument("--payload", default="{}", help="a JSON object: the step's result")
        signal.add_argument("--owner", help="who sends it (default: the first superuser)")
        approve = sub.add_parser("approve", help="approve (or --reject) an approval step, as a user of its group")
        approve.add_argument("workflow_id")
        approve.add_argument("task_id")
        approve.add_argument("--as", dest="user", required=True, help="the deciding user's username")
        approve.add_argument("--reject", action="store_true", help="reject: the workflow fails and compensates")
        approve.add_argument("--comment", default="", help="why (recorded with the decision)")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            with operator_command("workflows", opts["action"]):  # traced, audited as the CLI's
                getattr(self, f"do_{opts['action']}")(opts)
        except (WorkflowNotFound, NoSuchSignal, NoSuchApproval, NotAnApprover, StateConflict) as exc:
            raise CommandError(str(exc)) from exc

    def do_approve(self, opts: dict[str, Any]) -> None:
        user = cli_owner(opts["user"])
        workflow = selectors.workflow_get(user=OPERATOR, workflow_id=opts["workflow_id"])
        decision = Decision.REJECT if opts["reject"] else Decision.APPROVE
        with transaction.atomic():
            step = steps.decide(workflow_id=workflow.id, task_id=opts["task_id"], user=user, decision=decision,
                                comment=opts["comment"])  # fmt: skip
        self.stdout.write(f"{user.get_username()} {decision}d {step.task_id}: it is {step.state}")

    def do_signal(self, opts: dict[str, Any]) -> None:
        try:
            payload = orjson.loads(opts["payload"])
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise CommandError("--payload must be a JSON object")
        workflow = selectors.workflow_get(user=OPERATOR, workflow_id=opts["workflow_id"])
        with transaction.atomic():
            step = steps.signal(
                workflow_id=workflow.id, name=opts["name"], payload=payload, sent_by=cli_owner(opts["owner"]).pk
            )
        self.stdout.write(f"delivered to {step.task_id}" if step else "kept until its step is reached")

    def do_submit(self, opts: dict[str, Any]) -> None:
        raw = sys.stdin.buffer.read() if opts["file"] == "-" else Path(opts["file"]).read_bytes()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"{opts['file']} is not valid JSON: {exc}") from exc
        serializer = WorkflowInputSerializer(data=body)
        if not serializer.is_valid():
            raise CommandError("invalid workflow: " + dump(serializer.errors))
        workflow, _ = services.workflow_submit(
            owner_id=cli_owner(opts["owner"]).pk,
            spec=serializer.to_spec(serializer.validated_data),
            max_tasks=settings.WORKFLOW_MAX_TASKS,
        )
        if not opts["wait"]:
            self.stdout.write(str(workflow.id))
            return
        self.stderr.write(
            f"submitted {workflow.id} ({workflow.tasks_total} tasks), waiting up to {opts['timeout']:.0f}s ..."
        )
        shown: set[str] = set()

        def report(w: Workflow) -> None:  # a line each time the progress changes
            progress = f"  {w.status}: {w.tasks_succeeded}/{w.tasks_total} tasks succeeded"
            if progress not in shown:
                shown.add(progress)
                self.stderr.write(progress)

        workflow_id = workflow.id
        workflow = wait_for_end(
            f"workflow {workflow_id}", lambda: Workflow.objects.get(id=workflow_id), WORKFLOW_TERMINAL,
            timeout=opts["timeout"], interval=0.1, on_poll=report,
        )  # fmt: skip
        self.stdout.write(dump(WorkflowDetailSerializer(workflow).data))
        if workflow.status != WorkflowStatus.SUCCEEDED:
            raise CommandError(
                f"workflow {workflow.id} ended {workflow.status} (failed task: {workflow.failed_task or '-'})"
            )

    def do_show(self, opts: dict[str, Any]) -> None:
        workflow = selectors.workflow_get(user=OPERATOR, workflow_id=opts["workflow_id"])
        self.stdout.write(dump(WorkflowDetailSerializer(workflow).data))

    def do_cancel(self, opts: dict[str, Any]) -> None:
        workflow = services.workflow_cancel(workflow_id=opts["workflow_id"])
        self.stdout.write(dump(WorkflowDetailSerializer(workflow).data))
