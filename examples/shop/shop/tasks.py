"""The shop's tasks, written against Django's Tasks framework. The platform runs each as a
job; listed in JOB_TASK_MODULES, this module is imported by every role at start."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from orchestration_platform.jobs.task_backend import task  # the framework's @task, with the platform's options

from shop.models import Order


class MailboxGone(Exception):
    """The address bounced for good: retrying cannot help."""


@task(max_attempts=5, timeout=timedelta(seconds=30), permanent_exceptions=(MailboxGone,))
def send_receipt(order_id: int) -> dict[str, object]:
    order = Order.objects.get(id=order_id)
    if order.email.endswith("@gone.example"):
        raise MailboxGone(order.email)
    order.receipt_sent_at = timezone.now()
    order.save(update_fields=["receipt_sent_at"])
    return {"order": order.id, "sent_to": order.email, "total_cents": order.total_cents}
