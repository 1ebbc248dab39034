from django.apps import AppConfig


class WorkflowsConfig(AppConfig):
    name = "workflows"
    label = "orchestration_workflows"  # unique in a host project that has its own `workflows` app (docs/design.md)
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A job of a workflow that ends moves its workflow on, in the same transaction.
        from jobs import transitions
        from workflows import advance

        transitions.on_workflow_job_ended(advance.job_ended)
