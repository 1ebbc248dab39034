from django.apps import AppConfig


class DevtoolsConfig(AppConfig):
    name = "devtools"
    label = "orchestration_devtools"  # unique in a host project that has its own `devtools` app (docs/design.md)
    verbose_name = "Development tools"
