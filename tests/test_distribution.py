"""The installable distribution (setup.py): our packages under `orchestration_platform`, with
what names them rewritten, and nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.conf import settings

spec = importlib.util.spec_from_file_location("platform_setup", Path(settings.BASE_DIR) / "setup.py")
assert spec is not None
assert spec.loader is not None
setup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(setup)  # its setup() runs only as __main__ (a build)


def test_imports_of_our_packages_are_namespaced_and_others_are_not():
    source = (
        "from jobs.models import Job  # é before nothing\n"
        "from django.db import models\n"
        "import jobs.models, os\n"
        "import config.ids as ids\n"
        "from orchestration.worker import execute\n"
        "def f():\n"
        "    from logs import store\n"
    )
    assert setup.rewrite(source) == (
        "from orchestration_platform.jobs.models import Job  # é before nothing\n"
        "from django.db import models\n"
        "import orchestration_platform.jobs.models; from orchestration_platform import jobs; import os\n"
        "import orchestration_platform.config.ids as ids\n"
        "from orchestration_platform.orchestration.worker import execute\n"
        "def f():\n"
        "    from orchestration_platform.logs import store\n"
    )


def test_only_strings_that_name_our_modules_are_rewritten():
    source = (
        'BACKEND = "jobs.task_backend.JobsBackend"\n'
        'URLS = ("config.urls", "jobs.dead", "orchestration.run_job", "jobs")\n'
        'logger = logging.getLogger("orchestration.worker")\n'
        'X = {"é": "dashboard.context_processors.links"}\n'
    )
    assert setup.rewrite(source) == (
        'BACKEND = "orchestration_platform.jobs.task_backend.JobsBackend"\n'
        'URLS = ("orchestration_platform.config.urls", "jobs.dead", "orchestration.run_job", "jobs")\n'
        'logger = logging.getLogger("orchestration.worker")\n'  # a logger's name, not an import
        'X = {"é": "orchestration_platform.dashboard.context_processors.links"}\n'
    )


def test_an_apps_name_is_its_full_path_and_a_second_pass_changes_nothing():
    apps = 'class JobsConfig(AppConfig):\n    name = "jobs"\n    label = "orchestration_jobs"\n'
    once = setup.rewrite(apps, apps_module=True)
    assert 'name = "orchestration_platform.jobs"' in once
    assert 'label = "orchestration_jobs"' in once
    assert setup.rewrite(once, apps_module=True) == once  # a rebuild over its own output is safe
