"""Django tasks through the real roles as processes: `task.enqueue()` in this process (the
web's part) → outbox → relay → Kafka → bridge → Celery → a solo worker that loads the test
task module from JOB_TASK_MODULES → the result back through `get_result`."""

from __future__ import annotations

import pytest

from jobs.models import Job
from jobs.task_backend.framework import TaskResultStatus
from tests.orchestration.conftest import wait_for
from tests.tasks_app import TASK_MODULE

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_enqueued_tasks_run_in_the_real_worker_and_their_results_come_back(stack, tasks_app, queue, settings):
    stack.env["JOB_TASK_MODULES"] = ",".join(settings.JOB_TASK_MODULES)  # the roles load TASK_MODULE too
    assert TASK_MODULE in stack.env["JOB_TASK_MODULES"]
    for role in ("relay", "bridge", "worker"):
        stack.start(role)
    on_queue = {name: getattr(tasks_app, name).using(queue_name=queue) for name in ("multiply", "whoami", "explode")}
    product = on_queue["multiply"].enqueue(6, 7)
    who = on_queue["whoami"].using(priority=100).enqueue(tag="e2e")
    boom = on_queue["explode"].enqueue("through every role")

    def finished() -> bool:
        return all(t.get_result(r.id).is_finished for t, r in [(tasks_app.multiply, product),
                   (tasks_app.whoami, who), (tasks_app.explode, boom)])  # fmt: skip

    try:
        wait_for(finished, timeout=90, message="three tasks finished")
    except AssertionError:
        print(stack.logs())
        raise

    done = tasks_app.multiply.get_result(product.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 42
    assert done.worker_ids == [Job.objects.get(id=product.id).worker] != [""]  # the worker process's id

    context = tasks_app.whoami.get_result(who.id)
    assert context.return_value["id"] == who.id
    assert context.return_value["attempt"] == 1
    assert Job.objects.get(id=who.id).priority == 9

    failed = tasks_app.explode.get_result(boom.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class_path == "jobs.handlers.PermanentError"
    assert "through every role" in failed.errors[0].traceback
