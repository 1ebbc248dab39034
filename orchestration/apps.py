from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Orchestration"

    def ready(self) -> None:
        # Every role registers the same handlers at start-up, so a type accepted at submit
        # is runnable by any worker.
        from orchestration.handlers import load_handler_modules

        load_handler_modules()
