from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    label = "orchestration_metrics"  # unique in a host project that has its own `metrics` app (docs/design.md)
    verbose_name = "Metrics and health"

    def ready(self) -> None:
        # django-prometheus creates its middleware's metrics on first use, in a lazy singleton
        # without a lock: two threads loading the middleware at once (each test Client does,
        # on its first request) both create them, and the second fails with
        # DuplicateTimeseries. Create them once, here, before any request.
        from django_prometheus.middleware import Metrics

        Metrics.get_instance()
