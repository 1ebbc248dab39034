"""A job's attempts and outbox rows go with it however it is deleted. No database constraint
ties them to the job (issue 33: the checks locked the job row at every submit and claim), so
every way of deleting jobs must take them first."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from jobs import transitions
from jobs.models import Job, JobAttempt, Outbox
from tests.factories import UserFactory, submit_job


def _started_and_waiting(owner) -> list[Job]:
    started, waiting = submit_job(owner), submit_job(owner)
    assert transitions.mark_running(started.id, dispatch_token=started.dispatch_token, worker="w", lease_seconds=60)
    return [started, waiting]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "delete",
    [
        pytest.param(lambda owner, jobs: [job.delete() for job in jobs], id="a job"),
        pytest.param(lambda owner, jobs: Job.objects.filter(owner=owner).delete(), id="a queryset"),
        pytest.param(lambda owner, jobs: owner.delete(), id="its owner"),
    ],
)
def test_deleting_jobs_leaves_no_attempt_or_outbox_row(delete: Callable) -> None:
    owner, bystander = UserFactory(), UserFactory()
    jobs = _started_and_waiting(owner)
    kept = _started_and_waiting(bystander)
    assert JobAttempt.objects.filter(job_id=jobs[0].id).exists()
    assert Outbox.objects.filter(job_id=jobs[1].id).exists()
    delete(owner, jobs)
    ids = [j.id for j in jobs]
    assert not JobAttempt.objects.filter(job_id__in=ids).exists()
    assert not Outbox.objects.filter(job_id__in=ids).exists()
    assert JobAttempt.objects.filter(job_id=kept[0].id).count() == 1
    assert Outbox.objects.filter(job_id=kept[1].id).count() == 1
