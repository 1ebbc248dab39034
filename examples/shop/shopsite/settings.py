"""The shop's settings: the platform's (every engine URL and limit comes from the
environment, as in its own deployment), then what is the shop's own."""

from orchestration_platform.config.settings import *  # noqa: F403

# The shop's apps beside the platform's. `jobs` is the shop's own app (job postings for its
# careers page): the platform's app is `orchestration_platform.jobs`, labelled
# `orchestration_jobs`, so the two live side by side.
INSTALLED_APPS = [*INSTALLED_APPS, "shop", "jobs"]  # noqa: F405
ROOT_URLCONF = "shopsite.urls"

# The modules whose @tasks every role of the platform imports and runs (and no other).
JOB_TASK_MODULES = ["shop.tasks"]
