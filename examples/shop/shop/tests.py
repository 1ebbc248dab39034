"""The shop's own tests (`python manage.py test`), as its team would write them: an order and
its receipt task commit together or not at all, and the task runs through the platform's
real relay, bridge and worker, started here from the shop's own settings, with the shop's
code (its models) importable where it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.test import TransactionTestCase
from orchestration_platform.jobs.models import Job

from jobs.models import Posting  # the shop's own `jobs` app, beside the platform's
from shop.models import Order
from shop.tasks import send_receipt

HERE = Path(__file__).resolve().parent.parent


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Roles:
    """The platform's relay, bridge and a Celery worker, on this test's database, Kafka topics
    of their own, and the shop's settings."""

    def __init__(self, logs: Path) -> None:
        db = connection.settings_dict
        run = uuid.uuid4().hex[:10]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "shopsite.settings",
            "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "KAFKA_JOBS_TOPIC": f"shop-jobs-{run}",
            "KAFKA_JOBS_DLQ_TOPIC": f"shop-jobs-{run}.dlq",
            "KAFKA_JOBS_DEAD_TOPIC": f"shop-jobs-{run}.dead",
            "KAFKA_BRIDGE_GROUP": f"shop-bridge-{run}",
            # A Redis database of their own: a worker of another stack on the same Redis would
            # take the messages of this test's jobs (and find no such job in its database).
            "REDIS_URL": settings.REDIS_URL.rsplit("/", 1)[0] + "/15",
            "PYTHONUNBUFFERED": "1",
        }
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        python = sys.executable
        for name, argv in {
            "relay": [python, "manage.py", "run_relay"],
            "bridge": [python, "manage.py", "run_bridge"],
            "worker": [python, "-m", "celery", "-A", "orchestration_platform.config", "worker", "--pool", "solo",
                       "--without-mingle", "--without-gossip", "--loglevel", "INFO"],
        }.items():  # fmt: skip
            with (self.logs / f"{name}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(argv, cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.logs.glob("*.log")))


class ReceiptTests(TransactionTestCase):
    def test_the_task_commits_with_the_order_or_not_at_all(self) -> None:
        with transaction.atomic():
            order = Order.objects.create(email="ada@example.com", total_cents=1200)
            result = send_receipt.enqueue(order.id)
        self.assertTrue(Job.objects.filter(id=result.id).exists())

        with self.assertRaises(RuntimeError), transaction.atomic():
            lost = Order.objects.create(email="bob@example.com", total_cents=500)
            rolled_back = send_receipt.enqueue(lost.id)
            raise RuntimeError("payment declined after the enqueue")
        self.assertFalse(Order.objects.filter(email="bob@example.com").exists())
        self.assertFalse(Job.objects.filter(id=rolled_back.id).exists())

    def test_the_task_runs_through_the_platforms_roles_and_its_result_comes_back(self) -> None:
        logs = Path(settings.DATA_DIR) / f"roles-{uuid.uuid4().hex[:8]}"
        logs.mkdir(parents=True)
        roles = Roles(logs)
        with transaction.atomic():
            order = Order.objects.create(email="ada@example.com", total_cents=4200)
            result = send_receipt.enqueue(order.id)
            gone = Order.objects.create(email="cy@gone.example", total_cents=100)
            bounced = send_receipt.enqueue(gone.id)
        roles.start()
        try:
            wait_for(lambda: send_receipt.get_result(result.id).is_finished, 90, "the receipt task to finish")
            wait_for(lambda: send_receipt.get_result(bounced.id).is_finished, 30, "the bounced task to finish")
        except AssertionError:
            raise AssertionError(roles.output()) from None
        finally:
            roles.stop()

        done = send_receipt.get_result(result.id)
        self.assertEqual(done.status, "SUCCESSFUL", roles.output())
        self.assertEqual(done.return_value, {"order": order.id, "sent_to": "ada@example.com", "total_cents": 4200})
        order.refresh_from_db()
        self.assertIsNotNone(order.receipt_sent_at)  # the worker used the shop's model

        failed = send_receipt.get_result(bounced.id)
        self.assertEqual(failed.status, "FAILED")
        self.assertEqual([e.exception_class_path for e in failed.errors], ["shop.tasks.MailboxGone"])  # not retried

    def test_the_shops_own_jobs_app_lives_beside_the_platforms(self) -> None:
        Posting.objects.create(title="Backend engineer")
        self.assertEqual(Posting._meta.db_table, "jobs_posting")
        self.assertEqual(Job._meta.app_label, "orchestration_jobs")
        self.assertEqual(Job._meta.db_table, "jobs_job")
        call_command("check", "--fail-level", "WARNING")
