"""The built-in demo.* handlers are registered in every role whatever JOB_HANDLER_MODULES
lists (they once disappeared as soon as a deployment listed its own modules)."""

from __future__ import annotations

import os
import subprocess
import sys

from django.conf import settings

BUILT_IN = ["demo.echo", "demo.fail", "demo.flaky", "demo.log", "demo.noop", "demo.sleep"]


def test_built_in_handlers_stay_registered_beside_a_deployments_own():
    env = {**os.environ, "JOB_HANDLER_MODULES": "tests.security.fuzz_handlers"}
    code = (
        "import django; django.setup(); from jobs.handlers import registered_types; "
        "print(','.join(t for t in registered_types() if t.startswith(('demo.', 'fuzz.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, check=True
    ).stdout.strip()
    registered = out.split(",")
    assert set(BUILT_IN) <= set(registered)
    assert any(t.startswith("fuzz.") for t in registered)  # and the deployment's own
