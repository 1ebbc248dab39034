from __future__ import annotations

import uuid

import factory
from django.contrib.auth import get_user_model

from jobs.dispatch import DispatchEnvelope
from jobs.models import Job
from jobs.services import JobSpec, job_submit


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")
    password = factory.django.Password("correct horse battery staple")


class StaffFactory(UserFactory):
    is_staff = True
    is_superuser = True


def submit_job(owner, type: str = "demo.noop", **kwargs):
    """A job submitted through the real service (job row + outbox row)."""
    return job_submit(owner_id=owner.pk, spec=JobSpec(type=type, **kwargs)).job


def dispatch_of(job: Job, token: uuid.UUID | str | None = None) -> DispatchEnvelope:
    """The envelope of the job's current dispatch (or of `token`, e.g. a stale one), as a
    worker would decode it from its Celery message."""
    row = Job.objects.get(id=job.id)
    token = token if token is not None else row.dispatch_token
    return DispatchEnvelope.build(
        row.id, row, owner_id=row.owner_id, attempt=row.attempt_seq + 1, token=uuid.UUID(str(token))
    )
