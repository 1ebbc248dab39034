"""API fuzzing with schemathesis against the OpenAPI schema, in-process (WSGI), on the real
engines: no input gives a 5xx, and responses match the schema. `make fuzz` runs more examples
than `make test` (FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis import checks

from config.wsgi import application
from tests.factories import UserFactory

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
# In `make test` the same examples every run (CI must not turn red at random); `make fuzz`
# (FUZZ_EXAMPLES set) explores new ones each time.
DERANDOMIZE = "FUZZ_EXAMPLES" not in os.environ

pytestmark = pytest.mark.fuzz


@pytest.fixture
def token(db, ch_table) -> Iterator[str]:
    """A user's token, with a logs table of its own in ClickHouse (without it every log
    search would rightly answer 503)."""
    # The WSGI app runs in this thread and would close the test's connection (inside its
    # transaction) at the end of every request; Django's test client avoids that the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield Token.objects.create(user=UserFactory()).key
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=DERANDOMIZE)
def test_no_input_breaks_the_api(case, token):
    # Every check but the two about how precise the schema is: the API validates what a schema
    # cannot say (a registered job type, a cron expression), so some schema-valid input gets a
    # 400; and an empty query parameter counts as not given (as in DRF and django-filter).
    case.call_and_validate(
        headers={"Authorization": f"Token {token}"},
        excluded_checks=[checks.positive_data_acceptance, checks.negative_data_rejection],
    )
