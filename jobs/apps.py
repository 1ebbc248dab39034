from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Jobs"

    def ready(self) -> None:
        # Every role registers the same handlers at start-up, so a type accepted at submit
        # is runnable by any worker.
        from jobs.handlers import load_handler_modules
        from jobs.task_registry import load_task_modules

        load_handler_modules()
        load_task_modules()  # Django tasks (JOB_TASK_MODULES), registered under their import path
