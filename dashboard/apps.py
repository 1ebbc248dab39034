from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    label = "orchestration_dashboard"  # unique in a host project that has its own `dashboard` app (docs/design.md)
    verbose_name = "Operator dashboard"
