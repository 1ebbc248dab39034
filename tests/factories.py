from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

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
