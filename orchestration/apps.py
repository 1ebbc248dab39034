from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Orchestration"

    def ready(self) -> None:
        # The built-in demo.* handlers, in every role whatever JOB_HANDLER_MODULES says.
        from orchestration import demo_handlers  # noqa: F401
