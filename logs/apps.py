from django.apps import AppConfig


class LogsConfig(AppConfig):
    name = "logs"
    label = "orchestration_logs"  # unique in a host project that has its own `logs` app (docs/design.md)
    verbose_name = "Logs"
